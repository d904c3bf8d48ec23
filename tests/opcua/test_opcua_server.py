"""The OPC UA output seen by an independent asyncua client: the OPC 40100 subset, ResultReady events, the last
result per camera, GetResultById / GetResultComponentsById, the state machine, and a server thread that can
never make the committing thread wait."""
from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any, Iterator

import pytest
from asyncua import ua
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from inspector.db.models import ResultRow
from inspector.outputs import StationState
from inspector.outputs import opcua as opcua_module
from inspector.outputs.opcua import vision_state
from inspector.outputs.opcua_address_space import parse_result_id
from inspector.outputs.opcua_security import hash_password
from opcua_client import MV, EventLog, connect, eventually, run, session, values
from station_side import CLASSES, Station

SESSION = str(uuid.uuid4())  # for parse_result_id
QUEUE = 20


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    st = Station(tmp_path_factory.mktemp("opcua"), result_queue=QUEUE, users={"plc": hash_password("s3cret")})
    st.start()
    st.output.state_changed(StationState())
    yield st
    st.stop()


def plc_client(st: Station):
    return connect(st.url, st.plc, user="plc", password="s3cret")


def plc_session(st: Station):
    return session(st.url, st.plc, user="plc", password="s3cret")


def session_of(st: Station) -> str:
    return st.db.session.id


def node(client: Any, path: str) -> Any:
    return client.get_node(ua.NodeId(f"VisionSystem{'.' + path if path else ''}", 1))


async def call(client: Any, method: str, *args: ua.Variant) -> list[Any]:
    return await node(client, "ResultManagement").call_method(ua.NodeId(f"VisionSystem.ResultManagement.{method}", 1),
                                                              *args)


def rid(text: str) -> ua.Variant:
    return ua.Variant(text, ua.VariantType.String)


TIMEOUT = ua.Variant(0, ua.VariantType.Int32)


def test_address_space_is_named_after_opc_40100(station: Station) -> None:
    async def scenario() -> None:
        async with plc_session(station) as client:
            mv = await client.get_namespace_index(MV)
            assert (await client.get_namespace_array())[1] == "urn:rddn-inspector:line1"
            vs = node(client, "")
            assert (await vs.read_type_definition()) == ua.NodeId(1003, mv)  # VisionSystemType
            sm = await vs.get_child(f"{mv}:VisionStateMachine")
            assert (await sm.read_type_definition()) == ua.NodeId(1017, mv)
            auto = await sm.get_child(f"{mv}:AutomaticModeStateMachine")
            assert (await auto.read_type_definition()) == ua.NodeId(1021, mv)
            states = {(await c.read_browse_name()).Name for c in await sm.get_children()}
            assert {"Preoperational", "Operational", "Error", "Halted", "CurrentState"} <= states
            rm = await vs.get_child(f"{mv}:ResultManagement")
            assert (await rm.read_type_definition()) == ua.NodeId(1007, mv)
            method = await rm.get_child(f"{mv}:GetResultById")
            ins = await (await method.get_child("0:InputArguments")).read_value()
            outs = await (await method.get_child("0:OutputArguments")).read_value()
            assert [a.Name for a in ins] == ["ResultId", "Timeout"]
            assert [a.Name for a in outs] == ["ResultHandle", "Result", "Error"]
            components = await rm.get_child(f"{mv}:GetResultComponentsById")
            outs = [a.Name for a in await (await components.get_child("0:OutputArguments")).read_value()]
            assert outs[0] == "ResultHandle" and outs[-1] == "Error" and {"ResultId", "Verdict", "Serial"} <= set(outs)
            # the event type: ours, a subtype of 40100's ResultReadyEventType, a subtype of BaseEventType
            ours = client.get_node(ua.NodeId("InspectionResultReadyEventType", 1))
            parent = (await ours.get_referenced_nodes(ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse))[0]
            assert parent.nodeid == ua.NodeId(1024, mv)
            assert (await parent.read_browse_name()) == ua.QualifiedName("ResultReadyEventType", mv)
            grand = (await parent.get_referenced_nodes(ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse))[0]
            assert grand.nodeid == ua.NodeId(ua.ObjectIds.BaseEventType)
            for cam in ("top", "bottom"):
                last = await vs.get_child(["1:Cameras", f"1:{cam}", "1:LastResult"])
                names = {(await c.read_browse_name()).to_string() for c in await last.get_children()}
                assert {f"{mv}:ResultId", "1:Verdict", "1:Serial", "1:Position", "1:ClassCounts",
                        "1:DefectSeverity"} <= names
                assert await node(client, f"Cameras.{cam}.LastResult.Camera").read_value() == cam
            assert await node(client, "Session").read_value() == session_of(station)
            assert await node(client, "PreviousSession").read_value() == ""  # the first run of this database
            assert await node(client, "PreviousLastSequence").read_value() == 0
    run(scenario)


def test_result_ready_event_per_frame_and_last_result(station: Station) -> None:
    async def scenario() -> None:
        async with plc_session(station) as client:
            mv = await client.get_namespace_index(MV)
            on_system, on_server = EventLog(), EventLog()
            sub = await client.create_subscription(20, on_system)
            # on the VisionSystem, filtered on 40100's ResultReadyEventType: our subtype's events match it
            await sub.subscribe_events(node(client, ""), client.get_node(ua.NodeId(1024, mv)))
            # on the Server object, with our event type: its extra fields come too
            ours = client.get_node(ua.NodeId("InspectionResultReadyEventType", 1))
            sub2 = await client.create_subscription(20, on_server)
            await sub2.subscribe_events(client.nodes.server, ours)
            sid = session_of(station)
            first = station.result("OK").seq - 1
            station.result("NG", labels=("open", "open", "short"), severity="critical")
            station.result("NOT_INSPECTED", camera="bottom", reason="corrupt")
            mv_events = [values(e) for e in await on_system.wait_for(3)]
            events = [values(e) for e in await on_server.wait_for(3)]
            await asyncio.sleep(0.3)  # nothing more arrives: one event per result, no duplicates
            assert len(on_system.events) == 3 and len(on_server.events) == 3
            assert [e["ResultId"] for e in events] == [f"{sid}:{first + i}" for i in (1, 2, 3)]
            # a client that knows only 40100 gets 40100's fields of the same events
            assert [(e["ResultId"], e["ResultState"], e["IsPartial"], e["EventId"]) for e in mv_events] == [
                (e["ResultId"], e["ResultState"], e["IsPartial"], e["EventId"]) for e in events]
            assert "Verdict" not in mv_events[0]
            ok, ng, ni = events
            assert (ok["Verdict"], ok["ResultEvaluation"], ok["ResultState"], ok["Severity"]) == ("OK", 1, 1, 100)
            assert ng["Verdict"] == "NG" and ng["ResultEvaluation"] == 2 and ng["DefectSeverity"] == "critical"
            assert ng["ClassNames"] == ["open", "short", "mousebite"] and ng["ClassCounts"] == [2, 1, 0]
            assert ng["DetectionCount"] == 3 and ng["Severity"] == 800 and ng["IsPartial"] is False
            assert (ni["Verdict"], ni["ResultEvaluation"], ni["ResultState"]) == ("NOT_INSPECTED", 3, 4)
            assert ni["Reason"] == "corrupt" and ni["Camera"] == "bottom" and "corrupt frame" in ni["Message"].Text
            assert ni["SourceNode"] == ua.NodeId("VisionSystem.Cameras.bottom", 1)
            assert ng["Serial"].startswith("SN") and ng["Position"] == "A01" and ng["Sequence"] == first + 2
            # the last result per camera
            assert await node(client, "Cameras.top.LastResult.ResultId").read_value() == f"{sid}:{first + 2}"
            assert await node(client, "Cameras.top.LastResult.Verdict").read_value() == "NG"
            assert await node(client, "Cameras.top.LastResult.ClassCounts").read_value() == [2, 1, 0]
            assert await node(client, "Cameras.bottom.LastResult.Verdict").read_value() == "NOT_INSPECTED"
            assert await node(client, "LastSequence").read_value() == first + 3
            assert await node(client, "LastResultId").read_value() == f"{sid}:{first + 3}"
    run(scenario)


def stored_payload(st: Station, seq: int) -> str:
    with st.db.factory() as db:
        return db.scalar(select(ResultRow.payload).where(ResultRow.session_id == session_of(st), ResultRow.seq == seq))


def test_get_result_by_id_is_served_from_the_database(station: Station, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        sid = session_of(station)
        result = station.result("NG", labels=("short",), severity="warning")
        result_id = f"{sid}:{result.seq}"
        async with plc_session(station) as client:
            handle, payload, error = await call(client, "GetResultById", rid(result_id), TIMEOUT)
            assert (handle, error) == (0, 0) and payload == stored_payload(station, result.seq)  # the bus message
            out = await call(client, "GetResultComponentsById", rid(result_id), TIMEOUT)
            assert out[0] == 0 and out[-1] == 0
            assert out[1:5] == [result_id, 1, False, result.processed_at]
            assert out[5:12] == ["top", "A01", result.serial, "NG", 2, "warning", CLASSES]
            assert out[12:14] == [[0, 1, 0], 1]
            # errors are the Error output (0 OK, negative: application-specific, as 40100 asks)
            assert (await call(client, "GetResultById", rid(f"{sid}:999999"), TIMEOUT))[2] == -1
            assert (await call(client, "GetResultById", rid(f"{uuid.uuid4()}:1"), TIMEOUT))[2] == -1
            for bad in ("", "42", f"{sid}:0", f"{sid}:-3", "not-a-uuid:5", f"{sid}:1e3"):
                assert (await call(client, "GetResultById", rid(bad), TIMEOUT))[2] == -2, bad
            empty = await call(client, "GetResultComponentsById", rid(f"{sid}:999999"), TIMEOUT)
            assert empty[-1] == -1 and empty[1] == "" and empty[11] == []

            def database_down(*_: object) -> None:
                raise OperationalError("SELECT", {}, Exception("database is locked"))
            monkeypatch.setattr(opcua_module, "load_result", database_down)
            assert (await call(client, "GetResultById", rid(result_id), TIMEOUT))[2] == -3
            monkeypatch.undo()
            assert (await call(client, "GetResultById", rid(result_id), TIMEOUT))[2] == 0
            with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
                await call(client, "GetResultById", ua.Variant(7, ua.VariantType.Int32), TIMEOUT)
            with pytest.raises(ua.UaStatusCodeError, match="BadArgumentsMissing"):
                await call(client, "GetResultById", rid(result_id))
    run(scenario)


def test_get_result_answers_busy_instead_of_queueing(station: Station, monkeypatch: pytest.MonkeyPatch) -> None:
    """DB_SLOTS lookups wait on a stuck database; the next one says busy (-4) at once, the slow ones finish."""
    gate = threading.Event()
    real = opcua_module.load_result

    def stuck(*args: Any) -> Any:
        gate.wait(30)
        return real(*args)

    async def scenario() -> None:
        result_id = rid(station.result("OK").result_id)
        clients = [await plc_client(station) for _ in range(opcua_module.DB_SLOTS + 1)]
        monkeypatch.setattr(opcua_module, "load_result", stuck)
        try:
            slow = [asyncio.ensure_future(call(c, "GetResultById", result_id, TIMEOUT))
                    for c in clients[:opcua_module.DB_SLOTS]]
            await asyncio.sleep(0.5)
            assert not any(t.done() for t in slow)
            assert (await call(clients[-1], "GetResultById", result_id, TIMEOUT))[2] == -4
            gate.set()
            assert [r[2] for r in await asyncio.gather(*slow)] == [0] * opcua_module.DB_SLOTS
        finally:
            gate.set()
            for c in clients:
                await c.disconnect()
    run(scenario)


def test_state_machine_follows_the_station(station: Station, monkeypatch: pytest.MonkeyPatch) -> None:
    async def state(client: Any) -> tuple[str, str, str]:
        top = await node(client, "VisionStateMachine.CurrentState").read_value()
        mode = await node(client, "VisionStateMachine.AutomaticModeStateMachine.CurrentState").read_value()
        return top.Text, mode.Text, await node(client, "StateReason").read_value()

    async def becomes(client: Any, expected: tuple[str, str, str]) -> None:
        async def reached() -> bool:
            return await state(client) == expected
        await eventually(reached)

    async def scenario() -> None:
        async with plc_session(station) as client:
            try:
                monkeypatch.setattr(opcua_module, "EXECUTING_HOLD_S", 0.0)
                await becomes(client, ("Operational", "Ready", ""))
                monkeypatch.setattr(opcua_module, "EXECUTING_HOLD_S", 60.0)
                station.result("OK")
                await becomes(client, ("Operational", "ContinuousExecution", ""))
                station.output.state_changed(StationState("degraded", {"detector": "restart budget spent"}))
                await becomes(client, ("Error", "Initialized", "detector: restart budget spent"))
                sid = await node(client, "VisionStateMachine.CurrentState.Id").read_value()
                assert sid == ua.NodeId("VisionSystem.VisionStateMachine.Error", 1)
            finally:
                station.output.state_changed(StationState())
            await becomes(client, ("Operational", "ContinuousExecution", ""))
    run(scenario)


@pytest.mark.parametrize("station_state, stopping, recent, expected", [
    (None, False, False, ("Preoperational", "Initialized")),
    (StationState(), True, True, ("Halted", "Initialized")),
    (StationState("degraded", {"database": "down"}), False, True, ("Error", "Initialized")),
    (StationState("degraded", {}), False, False, ("Operational", "Ready")),
    (StationState(), False, True, ("Operational", "ContinuousExecution")),
    (StationState(), False, False, ("Operational", "Ready")),
])
def test_vision_state_mapping(station_state: StationState | None, stopping: bool, recent: bool,
                              expected: tuple[str, str]) -> None:
    got = vision_state(station_state, stopping, recent)
    assert (got.state, got.mode) == expected
    assert got.reason == ("database: down" if expected[0] == "Error" else "")


def test_publish_never_waits_for_a_stuck_server_thread(station: Station) -> None:
    """Block the server's event loop; the committing thread still publishes at once, the buffer keeps the newest
    QUEUE results (the dropped ones stay fetchable by id) and the server catches up when it is free again."""
    loop = station.output._loop
    assert loop is not None
    release, blocked = threading.Event(), threading.Event()

    def stuck() -> None:
        blocked.set()
        release.wait(30)
    loop.call_soon_threadsafe(stuck)
    assert blocked.wait(10)
    dropped_before, shown_before = station.output.stats.dropped, station.output.stats.shown
    sent = [station.result("OK") for _ in range(QUEUE + 7)]  # each committed to the database first
    assert not release.is_set()  # every publish returned while the server thread was stuck
    assert station.output.stats.dropped - dropped_before == 7
    release.set()

    async def scenario() -> None:
        async with plc_session(station) as client:
            async def caught_up() -> bool:
                return await node(client, "LastSequence").read_value() == sent[-1].seq
            await eventually(caught_up)
            assert station.output.stats.shown - shown_before == QUEUE
            oldest = sent[0]  # dropped from the buffer, still served by id
            _, payload, error = await call(client, "GetResultById", rid(oldest.result_id), TIMEOUT)
            assert error == 0 and json.loads(payload)["seq"] == oldest.seq
    run(scenario)


def test_parse_result_id() -> None:
    assert parse_result_id(f" {SESSION}:17 ") == (SESSION, 17)
    assert parse_result_id(f"{SESSION.upper()}:1") == (SESSION, 1)  # canonical uuid form
    for bad in ("", ":", f"{SESSION}:", f"{SESSION}:x", f"{SESSION}:0", f"{SESSION}:{'9' * 19}", "abc:3"):
        with pytest.raises(ValueError):
            parse_result_id(bad)

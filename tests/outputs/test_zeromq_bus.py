"""The ZeroMQ output with a real SQLite database and real sockets on loopback: birth for late subscribers (XPUB),
result and alarm topics, and the paged, bounded replay endpoint (limits, refusals, size limit)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Iterator

import pytest
import zmq

from inspector.db.models import Frame
from inspector.db.records import open_station_database
from inspector.outputs.base import OutputContext, SessionInfo, StationState
from inspector.outputs.result import Verdict
from inspector.outputs.session import record
from inspector.outputs.zeromq import ZeroMQOutput
from inspector.outputs.zeromq_replay import PeerLimiter, ReplayLimits

SESSION = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def database(tmp_path):
    """A migrated station database with one bus session (no rows yet)."""
    from inspector.config import parse_station_config
    from inspector.db.models import BusSession

    cfg = parse_station_config({"station": "st", "state_dir": "state", "cameras": [{"id": "cam1", "drop_folder": "d"}]},
                               "<test>", tmp_path)
    engine, factory, cams = open_station_database(cfg)
    with factory.begin() as db:
        db.add(BusSession(id=SESSION, station_id="st", last_seq=0, last_result_seq=0))
    yield factory, cams["cam1"]
    engine.dispose()


def commit_results(database, make_result, count: int, alarm_every: int = 2, start: int = 1) -> list:
    """``count`` committed results (every ``alarm_every``-th an alarm), as the pipeline commits them."""
    factory, camera_id = database
    made, alarm_seq = [], 0
    with factory.begin() as db:
        for seq in range(start, start + count):
            frame = Frame(camera_id=camera_id, name=f"P00_s{seq}.png", sha256=f"{seq:064x}", status="ok",
                          source_path="/drop/x", processed_at=datetime.now(timezone.utc))
            db.add(frame)
            db.flush()
            alarm = seq % alarm_every == 0
            alarm_seq += alarm
            result = make_result(seq, Verdict.NG if alarm else Verdict.OK, alarm_seq=alarm_seq if alarm else None,
                                 session=SESSION, frame_id=frame.id)
            record(db, result)
            made.append(result)
    return made


@pytest.fixture
def bus(database) -> Iterator[callable]:
    started: list[ZeroMQOutput] = []

    def start(limits: ReplayLimits | None = None, heartbeat_s: float = 5.0) -> ZeroMQOutput:
        out = ZeroMQOutput("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", heartbeat_s, replay_limits=limits)
        out.start(OutputContext("st", SessionInfo(SESSION, datetime.now(timezone.utc), "previous-session", 7, 9),
                                database[0]))
        started.append(out)
        return out

    yield start
    for out in started:
        out.stop()


def request(endpoint: str, body: bytes | list[bytes], timeout_ms: int = 3000) -> list[bytes] | None:
    """One DEALER request; the reply frames (without the delimiter), or None when none came."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", *(body if isinstance(body, list) else [body])])
        if not sock.poll(timeout_ms):
            return None
        return [f for f in sock.recv_multipart() if f]
    finally:
        sock.close()


def ask(endpoint: str, **req: object) -> tuple[dict, list[dict]]:
    frames = request(endpoint, json.dumps(req).encode())
    assert frames is not None, f"no reply to {req}"
    return json.loads(frames[0]), [json.loads(f) for f in frames[1:]]


def test_a_subscriber_that_connects_later_still_gets_the_birth(bus, validate_bus_message) -> None:
    out = bus()
    time.sleep(0.3)  # the birth sent at start went to nobody
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"status.st.")
    sub.connect(out.bound_publish)
    try:
        got: dict[str, dict] = {}
        deadline = time.monotonic() + 3
        while {"birth", "healthy"} - set(got) and time.monotonic() < deadline:
            if sub.poll(100):
                topic, body = sub.recv_multipart()
                got[topic.decode().rsplit(".", 1)[-1]] = validate_bus_message(json.loads(body))
        birth = got["birth"]
        assert birth["session"] == SESSION and birth["previous_session"] == "previous-session"
        assert (birth["previous_last_seq"], birth["previous_last_result_seq"]) == (7, 9)
        assert birth["state"] == "healthy" and got["healthy"]["inspection"] == "available"
        assert out.welcomes >= 1
        # The station degrades: the next subscriber's welcome says so, in the birth and as the state message.
        out.state_changed(StationState("degraded", {"database": "down"}))
        sub2 = zmq.Context.instance().socket(zmq.SUB)
        sub2.linger = 0
        sub2.setsockopt(zmq.SUBSCRIBE, b"status.st.")  # the same topic again: only XPUB_VERBOSE passes it up
        sub2.connect(out.bound_publish)
        again = None
        deadline = time.monotonic() + 3
        while again is None and time.monotonic() < deadline:
            if sub2.poll(100):
                topic, body = sub2.recv_multipart()
                again = validate_bus_message(json.loads(body)) if topic == b"status.st.birth" else None
        sub2.close()
        assert again is not None, "no birth for the second subscriber"
        assert again["started_at"] == birth["started_at"] and again["state"] == "degraded"
        assert again["problems"] == {"database": "down"}
    finally:
        sub.close()


def test_results_and_alarms_go_out_on_their_topics(bus, make_result, validate_bus_message) -> None:
    out = bus()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    for topic in (b"result.st.", b"alarm.st."):
        sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(out.bound_publish)
    time.sleep(0.3)  # slow joiner
    out.publish(make_result(1, session=SESSION))
    out.publish(make_result(2, Verdict.NG, alarm_seq=1, session=SESSION))
    out.publish(make_result(3, Verdict.NOT_INSPECTED, session=SESSION))
    got = []
    while len(got) < 4 and sub.poll(2000):
        topic, body = sub.recv_multipart()
        got.append((topic.decode(), validate_bus_message(json.loads(body))))
    sub.close()
    assert [(t, m["type"], m["seq"]) for t, m in got] == [
        ("result.st.cam1", "result", 1), ("result.st.cam1", "result", 2), ("alarm.st.warning", "alarm", 1),
        ("result.st.cam1", "result", 3)]
    assert (out.published_result_seq, out.published_seq, out.published_count) == (3, 1, 1)


def test_replay_pages_are_bounded_by_count_and_bytes_and_cover_everything(bus, database, make_result,
                                                                           validate_bus_message) -> None:
    results = commit_results(database, make_result, 120, alarm_every=3)
    size = len(results[0].to_json())
    out = bus(ReplayLimits(max_count=25, max_bytes=10 * size))  # bytes bind first: ~10 results per page
    for stream, expected in (("result", [r.seq for r in results]),
                             ("alarm", [r.alarm_seq for r in results if r.alarm_seq])):
        seen: list[int] = []
        after, pages = 0, 0
        while True:
            header, page = ask(out.bound_replay, session=SESSION, after=after, stream=stream)
            validate_bus_message(header)
            for message in page:
                validate_bus_message(message)
            pages += 1
            assert header["count"] == len(page) <= 25 and header["bytes"] <= 10 * size + size // 2
            assert header["bytes"] == sum(len(json.dumps(m, separators=(",", ":"))) for m in page)
            assert header["last_seq"] == expected[-1] and header["known_session"] is True
            seen += [m["seq"] for m in page]
            if not header["more"]:
                break
            assert header["next_after"] == page[-1]["seq"]
            after = header["next_after"]
        assert seen == expected, stream
        assert pages >= len(expected) / 10, (stream, pages)
    # The client may ask for less than the server's cap; an empty tail says so.
    header, page = ask(out.bound_replay, session=SESSION, after=0, stream="result", limit=3)
    assert [m["seq"] for m in page] == [1, 2, 3] and header["more"] and header["next_after"] == 3
    header, page = ask(out.bound_replay, session=SESSION, after=120, stream="result")
    assert (header["count"], header["more"], header["next_after"]) == (0, False, 120)


def test_a_message_larger_than_the_page_still_goes_out_alone(bus, database, make_result) -> None:
    commit_results(database, make_result, 3, alarm_every=99)
    out = bus(ReplayLimits(max_bytes=4096))  # the minimum; each result is ~1 KB, so make the cap bind via count
    header, page = ask(out.bound_replay, session=SESSION, after=0, stream="result")
    assert header["count"] == 3
    out.replay_server.limits = ReplayLimits(max_bytes=4096).model_copy(update={"max_bytes": 10})
    header, page = ask(out.bound_replay, session=SESSION, after=0, stream="result")
    assert [m["seq"] for m in page] == [1] and header["more"]  # one per page: a client always progresses


def test_the_current_session_is_the_default_and_an_unknown_one_is_said_so(bus, database, make_result) -> None:
    commit_results(database, make_result, 4)
    out = bus()
    header, page = ask(out.bound_replay, after=1)  # no session: the current one; no stream: alarms
    assert (header["session"], header["stream"], [m["seq"] for m in page]) == (SESSION, "alarm", [2])
    header, page = ask(out.bound_replay, session="no-such-session", after=0)
    assert (header["known_session"], header["count"], header["last_seq"]) == (False, 0, 0)


BAD_REQUESTS = [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"session": null, "after": -1}', "'after'"),
    (b'{"after": "5"}', "'after'"),
    (b'{"after": true}', "'after'"),
    (b'{"session": 42}', "'session'"),
    (b'{"stream": "frames"}', "'stream'"),
    (b'{"limit": 0}', "'limit'"),
    (b'{"after": 0, "sesion": "x"}', "'sesion'"),
]


def test_bad_requests_are_told_what_is_wrong_not_our_internals(bus, validate_bus_message) -> None:
    out = bus()
    for body, words in BAD_REQUESTS:
        frames = request(out.bound_replay, body)
        assert frames is not None and len(frames) == 1, body
        reply = validate_bus_message(json.loads(frames[0]))
        assert reply["type"] == "error" and reply["error"] == "bad_request" and words in reply["message"], reply
        for internal in ("Traceback", "Error:", "pydantic", "sqlalchemy", "File \"", "input_value"):
            assert internal not in reply["message"], reply
    assert out.replay_server.refused["bad_request"] == len(BAD_REQUESTS)


def test_a_multipart_request_is_refused(bus) -> None:
    out = bus()
    frames = request(out.bound_replay, [b'{"after": 0}', b"more", b"parts"])
    assert frames is not None and json.loads(frames[0])["error"] == "bad_request"
    assert "one frame" in json.loads(frames[0])["message"]


def test_a_peer_beyond_its_rate_is_refused_and_others_are_served(bus) -> None:
    out = bus(ReplayLimits(peer_rate=0.01, peer_burst=3))
    replies = [json.loads(request(out.bound_replay, b'{"after": 0}')[0]) for _ in range(5)]  # type: ignore[index]
    assert [r["type"] for r in replies] == ["replay", "replay", "replay", "error", "error"]
    assert replies[3]["error"] == "rate_limited" and "requests/s" in replies[3]["message"]
    # Another address (the limiter keys on the peer's IP) is not affected.
    limiter = PeerLimiter(rate=0.01, burst=1)
    assert limiter.allow("10.0.0.1", now=0.0) and not limiter.allow("10.0.0.1", now=1.0)
    assert limiter.allow("10.0.0.2", now=1.0) and limiter.allow("10.0.0.1", now=101.0)


def test_an_oversized_request_is_dropped_by_libzmq_and_the_endpoint_keeps_serving(bus) -> None:
    out = bus(ReplayLimits(max_request_bytes=4096))
    assert request(out.bound_replay, json.dumps({"after": 0, "pad": "x" * 8000}).encode(), timeout_ms=1000) is None
    assert out.replay_server.requests == 0  # never reached Python
    header, _ = ask(out.bound_replay, after=0)
    assert header["type"] == "replay" and out.replay_server.requests == 1


def test_the_tail_fills_a_gap_in_the_middle_of_a_session_from_replay(bus, database, make_result) -> None:
    """Messages lost on the live stream (a high-water mark, a reconnect) are fetched by (session, seq), page by
    page, before the next live one is delivered; a duplicate live copy is dropped."""
    from inspector.alarms_tail import AlarmTail

    results = commit_results(database, make_result, 40, alarm_every=4)
    out = bus(ReplayLimits(max_count=5))  # the gap spans several pages
    got: dict[str, list[int]] = {"alarm": [], "result": []}
    tail = AlarmTail(out.bound_publish, out.bound_replay, "st", on_alarm=lambda m: got["alarm"].append(m["seq"]),
                     on_result=lambda m: got["result"].append(m["seq"]))
    try:
        live = {r.seq: json.loads(r.to_json()) for r in results}
        alarms = {r.alarm_seq: json.loads(r.alarm_json()) for r in results if r.alarm_seq}
        tail.handle("result.st.cam1", live[1])  # first contact: live from here
        tail.handle("result.st.cam1", live[2])
        tail.handle("result.st.cam1", live[31])  # 3..30 never arrived
        tail.handle("result.st.cam1", live[31])
        tail.handle("alarm.st.warning", alarms[1])
        tail.handle("alarm.st.warning", alarms[9])
        assert got["result"] == list(range(1, 32)) and got["alarm"] == list(range(1, 10))
        streams = tail.state.streams
        assert (streams["result"].replayed, streams["result"].gaps) == (28, 1)
        assert (streams["alarm"].replayed, streams["alarm"].gaps) == (7, 1)
        # A heartbeat ahead of us (the last messages were lost): fetched too.
        tail.handle("status.st.heartbeat", {"type": "heartbeat", "session": SESSION, "last_seq": 10,
                                            "last_result_seq": 40})
        assert got["result"] == list(range(1, 41)) and got["alarm"] == list(range(1, 11))
    finally:
        tail.close()

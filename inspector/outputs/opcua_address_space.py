"""The station as an OPC UA address space: a subset of OPC 40100-1 (Machine Vision), named after it.

Types live in the companion specification's namespace (``http://opcfoundation.org/UA/MachineVision``) with its
numeric identifiers; the station's instance nodes live in namespace 1 (the server's own, whose index OPC UA fixes)
with readable string NodeIds, so a PLC program can address them without browsing::

    Objects/VisionSystem                               MV:VisionSystemType, event notifier (ResultReady)
      MV:VisionStateMachine                            MV:VisionStateMachineType
        CurrentState (+ Id)                            Preoperational | Operational | Error | Halted
        MV:AutomaticModeStateMachine/CurrentState      Initialized | Ready | ContinuousExecution
      StateReason                                      why Error (e.g. "detector: restart budget spent")
      MV:ResultManagement                              MV:ResultManagementType
        MV:GetResultById(ResultId, Timeout) -> ResultHandle, Result (JSON), Error
        MV:GetResultComponentsById(ResultId, Timeout) -> the result as scalars, Error
      Session, LastSequence, LastResultId, PreviousSession, PreviousLastSequence
      Cameras/<camera>/LastResult/...                  ResultId, Verdict, Serial, Position, counts, ...

Where 40100 has a structure (ResultIdDataType, ResultDataType, PartIdDataType) this subset uses String and
scalars, which every PLC client can read; ``docs/operations.md`` lists the node ids and the deviations.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Sequence

from asyncua import Node, Server, ua
from asyncua.common.events import get_event_obj_from_type_node

from inspector.outputs.base import SessionInfo
from inspector.outputs.result import FrameResult

MV_NAMESPACE = "http://opcfoundation.org/UA/MachineVision"
# Identifiers of the OPC 40100-1 types this subset instantiates (its NodeSet, namespace MV_NAMESPACE).
VISION_SYSTEM_TYPE = 1003
RESULT_MANAGEMENT_TYPE = 1007
VISION_STATE_MACHINE_TYPE = 1017
VISION_AUTOMATIC_MODE_STATE_MACHINE_TYPE = 1021
RESULT_READY_EVENT_TYPE = 1024
INSPECTION_RESULT_READY_EVENT_TYPE = "InspectionResultReadyEventType"  # ours (ns=1): 40100's event + our fields

TOP_STATES = ("Preoperational", "Halted", "Error", "Operational")
AUTOMATIC_MODE_STATES = ("Initialized", "Ready", "SingleExecution", "ContinuousExecution")
VERDICTS = ("OK", "NG", "NOT_INSPECTED")
# OPC 40100 ResultStateDataType: 1 Completed, 4 Failed. OPC 40001-101 ResultEvaluationEnum: 1 OK, 2 NotOK,
# 3 NotDecidable (a frame that could not be inspected).
RESULT_STATE = {"OK": 1, "NG": 1, "NOT_INSPECTED": 4}
RESULT_EVALUATION = {"OK": 1, "NG": 2, "NOT_INSPECTED": 3}
EVENT_SEVERITY = {None: 300, "info": 300, "warning": 500, "critical": 800}  # BaseEventType.Severity 1..1000
OK_SEVERITY, NOT_INSPECTED_SEVERITY = 100, 600

# GetResultById / GetResultComponentsById ``Error``: 0 OK; negative values are application-specific (40100).
ERROR_OK, ERROR_UNKNOWN_RESULT, ERROR_BAD_RESULT_ID, ERROR_DATABASE, ERROR_BUSY = 0, -1, -2, -3, -4


def node_id(path: str) -> ua.NodeId:
    """Instance node ids: ``ns=1;s=VisionSystem.<path>``."""
    return ua.NodeId(f"VisionSystem{'.' + path if path else ''}", 1)


@dataclass(frozen=True)
class ResultView:
    """What the address space shows of one per-frame result (built from the result message, live or stored)."""

    session: str
    seq: int
    camera: str
    verdict: str  # OK | NG | NOT_INSPECTED
    position: str = ""
    serial: str = ""
    severity: str | None = None
    class_counts: dict[str, int] = field(default_factory=dict)
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    frame: str = ""
    reason: str = ""  # NOT_INSPECTED: the quarantine reason (machine-readable) ...
    detail: str = ""  # ... and its human-readable message

    @property
    def result_id(self) -> str:
        return format_result_id(self.session, self.seq)

    @classmethod
    def from_result(cls, result: FrameResult) -> "ResultView":
        counts: dict[str, int] = {}
        for det in result.detections:
            counts[det.class_name] = counts.get(det.class_name, 0) + 1
        quarantine = result.quarantine
        return cls(session=result.session, seq=result.seq, camera=result.camera, verdict=result.verdict.value,
                   position=result.position or "", serial=result.serial or "", severity=result.severity,
                   class_counts=counts, created=result.processed_at, frame=result.frame,
                   reason=quarantine.reason if quarantine else "", detail=quarantine.message if quarantine else "")


def format_result_id(session: str, seq: int) -> str:
    return f"{session}:{seq}"


def parse_result_id(text: str) -> tuple[str, int]:
    """``<session uuid>:<seq>`` -> (session, seq); ValueError for anything else."""
    session, sep, seq = (text or "").strip().rpartition(":")
    if not sep or not seq.isdigit() or len(seq) > 18 or int(seq) < 1:
        raise ValueError(f"result id must be '<session>:<sequence>', got {text[:80]!r}")
    return str(uuid.UUID(session)), int(seq)


@dataclass(frozen=True)
class VisionState:
    state: str  # one of TOP_STATES
    mode: str  # one of AUTOMATIC_MODE_STATES (meaningful while Operational)
    reason: str = ""


MethodHandler = Callable[[ua.NodeId, ua.Variant, ua.Variant], Awaitable[list[ua.Variant]]]

# (browse name, namespace "mv" or "own", variant type, array) of each LastResult variable and ResultReady field
_RESULT_FIELDS: tuple[tuple[str, str, ua.VariantType, bool], ...] = (
    ("ResultId", "mv", ua.VariantType.String, False),
    ("ResultState", "mv", ua.VariantType.Int32, False),
    ("IsPartial", "mv", ua.VariantType.Boolean, False),
    ("CreationTime", "mv", ua.VariantType.DateTime, False),
    ("Camera", "own", ua.VariantType.String, False),
    ("Position", "own", ua.VariantType.String, False),
    ("Serial", "own", ua.VariantType.String, False),
    ("Verdict", "own", ua.VariantType.String, False),
    ("ResultEvaluation", "own", ua.VariantType.Int32, False),
    ("DefectSeverity", "own", ua.VariantType.String, False),
    ("ClassNames", "own", ua.VariantType.String, True),
    ("ClassCounts", "own", ua.VariantType.UInt32, True),
    ("DetectionCount", "own", ua.VariantType.UInt32, False),
    ("Session", "own", ua.VariantType.String, False),
    ("Sequence", "own", ua.VariantType.UInt32, False),
    ("Frame", "own", ua.VariantType.String, False),
    ("Reason", "own", ua.VariantType.String, False),
)


class MachineVisionAddressSpace:
    """Builds the nodes once (``build``) and then shows results and the state: called on the server's loop only."""

    def __init__(self, server: Server, station: str, cameras: Sequence[str]) -> None:
        self.server = server
        self.station = station
        self.cameras = list(cameras)
        self.mv = 0
        self._event: Any = None
        self._state = VisionState("", "")
        self._written: dict[str, Any] = {}  # path -> last value written
        self._node_ids: dict[str, ua.NodeId] = {}

    # -- build ------------------------------------------------------------------------------------------------
    async def build(self, session: SessionInfo, get_result_by_id: MethodHandler,
                    get_result_components_by_id: MethodHandler) -> None:
        srv = self.server
        self.mv = await srv.register_namespace(MV_NAMESPACE)
        types = await self._build_types()
        objects = srv.nodes.objects
        vs = await objects.add_object(node_id(""), ua.QualifiedName("VisionSystem", 1), types["system"])
        await vs.write_attribute(ua.AttributeIds.DisplayName, ua.DataValue(ua.Variant(
            ua.LocalizedText(f"VisionSystem {self.station}"))))
        await vs.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
        self.vision_system = vs
        # FiniteStateMachineType subtypes: instantiating them creates CurrentState (+ Id) at <path>.CurrentState
        sm = await vs.add_object(node_id("VisionStateMachine"), self._mv("VisionStateMachine"), types["state_machine"],
                                 instantiate_optional=False)
        await self._add_states(sm, "VisionStateMachine", TOP_STATES)
        auto = await sm.add_object(node_id("VisionStateMachine.AutomaticModeStateMachine"),
                                   self._mv("AutomaticModeStateMachine"), types["automatic_mode"],
                                   instantiate_optional=False)
        await self._add_states(auto, "VisionStateMachine.AutomaticModeStateMachine", AUTOMATIC_MODE_STATES)
        await self._add_value(vs, "StateReason", "", ua.VariantType.String)
        rm = await vs.add_object(node_id("ResultManagement"), self._mv("ResultManagement"), types["result_management"])
        in_args = [_arg("ResultId", ua.VariantType.String, "<session>:<sequence>, as in ResultReady.ResultId"),
                   _arg("Timeout", ua.VariantType.Int32, "hint in ms how long the client needs the result; unused")]
        await rm.add_method(node_id("ResultManagement.GetResultById"), self._mv("GetResultById"), get_result_by_id,
                            in_args, [_arg("ResultHandle", ua.VariantType.UInt32, "always 0 (nothing to release)"),
                                      _arg("Result", ua.VariantType.String, "the result message (JSON)"),
                                      _arg("Error", ua.VariantType.Int32, _ERROR_TEXT)])
        await rm.add_method(node_id("ResultManagement.GetResultComponentsById"),
                            self._mv("GetResultComponentsById"), get_result_components_by_id, in_args,
                            [_arg("ResultHandle", ua.VariantType.UInt32, "always 0"),
                             *[_arg(name, vt, "", array) for name, _, vt, array in _RESULT_FIELDS],
                             _arg("Error", ua.VariantType.Int32, _ERROR_TEXT)])
        await self._add_value(vs, "Session", session.id, ua.VariantType.String)
        await self._add_value(vs, "LastSequence", 0, ua.VariantType.UInt32)
        await self._add_value(vs, "LastResultId", "", ua.VariantType.String)
        await self._add_value(vs, "PreviousSession", session.previous_id or "", ua.VariantType.String)
        await self._add_value(vs, "PreviousLastSequence", session.previous_last_result_seq, ua.VariantType.UInt32)
        cams = await vs.add_folder(node_id("Cameras"), ua.QualifiedName("Cameras", 1))
        for cam in self.cameras:
            cam_node = await cams.add_object(node_id(f"Cameras.{cam}"), ua.QualifiedName(cam, 1))
            last = await cam_node.add_object(node_id(f"Cameras.{cam}.LastResult"), ua.QualifiedName("LastResult", 1))
            for name, ns, vt, array in _RESULT_FIELDS:
                initial: Any = cam if name == "Camera" else [] if array else _EMPTY[vt]
                await self._add_value(last, f"Cameras.{cam}.LastResult.{name}", initial, vt, self._qname(name, ns))
        self._event = await get_event_obj_from_type_node(srv.get_node(types["event"]))

    async def _build_types(self) -> dict[str, ua.NodeId]:
        base_object = self.server.get_node(ua.ObjectIds.BaseObjectType)
        fsm = self.server.get_node(ua.ObjectIds.FiniteStateMachineType)
        mv = self.mv
        system = await base_object.add_object_type(ua.NodeId(VISION_SYSTEM_TYPE, mv), self._mv("VisionSystemType"))
        management = await base_object.add_object_type(ua.NodeId(RESULT_MANAGEMENT_TYPE, mv),
                                                       self._mv("ResultManagementType"))
        state_machine = await fsm.add_object_type(ua.NodeId(VISION_STATE_MACHINE_TYPE, mv),
                                                  self._mv("VisionStateMachineType"))
        automatic = await fsm.add_object_type(ua.NodeId(VISION_AUTOMATIC_MODE_STATE_MACHINE_TYPE, mv),
                                              self._mv("VisionAutomaticModeStateMachineType"))
        base_event = self.server.get_node(ua.ObjectIds.BaseEventType)
        ready = await base_event.add_object_type(ua.NodeId(RESULT_READY_EVENT_TYPE, mv),
                                                 self._mv("ResultReadyEventType"))
        for name, ns, vt, array in _RESULT_FIELDS:
            if ns == "mv":
                await ready.add_property(ua.NodeId(NamespaceIndex=mv), self._mv(name), _EMPTY[vt], varianttype=vt)
        ours = await ready.add_object_type(ua.NodeId(INSPECTION_RESULT_READY_EVENT_TYPE, 1),
                                           ua.QualifiedName(INSPECTION_RESULT_READY_EVENT_TYPE, 1))
        for name, ns, vt, array in _RESULT_FIELDS:
            if ns == "own":
                prop = await ours.add_property(ua.NodeId(NamespaceIndex=1), ua.QualifiedName(name, 1),
                                               [] if array else _EMPTY[vt], varianttype=vt)
                if array:
                    await prop.write_value_rank(1)
        return {"system": system.nodeid, "result_management": management.nodeid, "state_machine": state_machine.nodeid,
                "automatic_mode": automatic.nodeid, "event": ours.nodeid}

    async def _add_states(self, machine: Node, path: str, states: Sequence[str]) -> None:
        for name in states:
            kind = ua.ObjectIds.InitialStateType if name == states[0] else ua.ObjectIds.StateType
            await machine.add_object(node_id(f"{path}.{name}"), self._mv(name), kind)

    async def _add_value(self, parent: Node, path: str, value: Any, vt: ua.VariantType,
                         qname: ua.QualifiedName | None = None) -> None:
        var = await parent.add_variable(node_id(path), qname or ua.QualifiedName(path.rsplit(".", 1)[-1], 1),
                                        value, vt)
        self._written[path] = value
        if isinstance(value, list):
            await var.write_value_rank(1)

    def _mv(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.mv)

    def _qname(self, name: str, ns: str) -> ua.QualifiedName:
        return self._mv(name) if ns == "mv" else ua.QualifiedName(name, 1)

    # -- values -----------------------------------------------------------------------------------------------
    async def _write(self, path: str, value: Any, vt: ua.VariantType, when: datetime | None = None,
                     now: datetime | None = None) -> None:
        """Write a value (skipped when unchanged: a PLC's data-change subscription fires only on changes anyway,
        and a result rewrites ~20 variables, mostly with the same camera, position, classes, ...)."""
        if self._written.get(path, _UNSET) == value:
            return
        self._written[path] = value
        nodeid = self._node_ids.get(path)
        if nodeid is None:
            nodeid = self._node_ids[path] = node_id(path)
        now = now or datetime.now(timezone.utc)
        await self.server.write_attribute_value(nodeid, ua.DataValue(
            ua.Variant(value, vt), SourceTimestamp=when or now, ServerTimestamp=now))

    @staticmethod
    def fields(view: ResultView, classes: Sequence[str]) -> dict[str, Any]:
        """Browse name -> value of one result (LastResult, event, components). ClassNames: the model's classes
        (``classes``), then any other label the result has; ClassCounts: the detections of each."""
        names = list(classes) + sorted(set(view.class_counts) - set(classes))
        counts = [view.class_counts.get(c, 0) for c in names]
        return {"ResultId": view.result_id, "ResultState": RESULT_STATE[view.verdict], "IsPartial": False,
                "CreationTime": view.created, "Camera": view.camera, "Position": view.position,
                "Serial": view.serial, "Verdict": view.verdict, "ResultEvaluation": RESULT_EVALUATION[view.verdict],
                "DefectSeverity": view.severity or "", "ClassNames": names, "ClassCounts": counts,
                "DetectionCount": sum(counts), "Session": view.session, "Sequence": view.seq, "Frame": view.frame,
                "Reason": view.reason}

    def variants(self, view: ResultView | None, classes: Sequence[str] = ()) -> list[ua.Variant]:
        """The result as GetResultComponentsById outputs; empty values when there is none."""
        values = self.fields(view, classes) if view is not None else {
            name: [] if array else _EMPTY[vt] for name, _, vt, array in _RESULT_FIELDS}
        return [ua.Variant(values[name], vt, is_array=array) for name, _, vt, array in _RESULT_FIELDS]

    async def show_result(self, view: ResultView, classes: Sequence[str]) -> None:
        """LastResult of its camera (ResultId written last: a PLC watching it reads a complete result), the
        station's LastSequence, then one ResultReady event from the VisionSystem (and the Server object)."""
        values = self.fields(view, classes)
        now = datetime.now(timezone.utc)
        if view.camera in self.cameras:
            prefix = f"Cameras.{view.camera}.LastResult."
            for name, _, vt, _array in _RESULT_FIELDS[1:]:
                await self._write(prefix + name, values[name], vt, view.created, now)
            await self._write(prefix + "ResultId", view.result_id, ua.VariantType.String, view.created, now)
        await self._write("LastSequence", view.seq, ua.VariantType.UInt32, view.created, now)
        await self._write("LastResultId", view.result_id, ua.VariantType.String, view.created, now)
        await self._emit(view, values)

    async def _emit(self, view: ResultView, values: dict[str, Any]) -> None:
        event = self._event
        for name, value in values.items():
            setattr(event, name, value)
        now = datetime.now(timezone.utc)
        event.EventId = ua.Variant(uuid.uuid4().bytes, ua.VariantType.ByteString)
        event.Time, event.ReceiveTime = view.created, now
        event.SourceNode = node_id(f"Cameras.{view.camera}") if view.camera in self.cameras else node_id("")
        event.SourceName = view.camera
        event.Severity = (OK_SEVERITY if view.verdict == "OK" else NOT_INSPECTED_SEVERITY
                          if view.verdict == "NOT_INSPECTED" else EVENT_SEVERITY.get(view.severity, 300))
        event.Message = ua.LocalizedText(f"{view.camera} {view.position} {view.serial}: {view.verdict}"
                                         + (f" ({view.reason}: {view.detail})" if view.reason else ""))
        service = self.server.iserver.subscription_service
        for notifier in (self.vision_system.nodeid, ua.NodeId(ua.ObjectIds.Server)):
            event.emitting_node = notifier
            await service.trigger_event(event)

    async def show_state(self, state: VisionState) -> bool:
        """Write the state machines when the state changed; True if it did."""
        if state == self._state:
            return False
        self._state = state
        for path, name in (("VisionStateMachine", state.state), ("VisionStateMachine.AutomaticModeStateMachine",
                                                                 state.mode)):
            await self._write(f"{path}.CurrentState", ua.LocalizedText(name), ua.VariantType.LocalizedText)
            await self._write(f"{path}.CurrentState.Id", node_id(f"{path}.{name}"), ua.VariantType.NodeId)
        await self._write("StateReason", state.reason, ua.VariantType.String)
        return True


_UNSET = object()
# Value of a field before the first result / when GetResultComponentsById finds none (DateTime: OPC UA's minimum).
_EMPTY: dict[ua.VariantType, Any] = {ua.VariantType.String: "", ua.VariantType.Int32: 0, ua.VariantType.UInt32: 0,
                                     ua.VariantType.Boolean: False,
                                     ua.VariantType.DateTime: datetime(1601, 1, 1, tzinfo=timezone.utc)}
_ERROR_TEXT = "0 OK, -1 unknown result id, -2 malformed result id, -3 database unavailable, -4 busy"


def _arg(name: str, vt: ua.VariantType, description: str, array: bool = False) -> ua.Argument:
    arg = ua.Argument()
    arg.Name = name
    arg.DataType = ua.NodeId(vt.value)
    arg.ValueRank = 1 if array else -1
    arg.ArrayDimensions = [0] if array else []
    arg.Description = ua.LocalizedText(description)
    return arg

"""The one type of a committed frame result, and the alarm a result raises: what every output sends.

``FrameResult`` is built by the pipeline inside the commit transaction (its ``(session, seq)`` is assigned there,
its JSON is stored in the ``results`` table), then handed to every output once, in commit order. Its JSON form is
the ``result.<station>.<camera>`` bus message; ``schemas/frame-result.schema.json`` is generated from this model
(``python -m inspector.outputs.schemas``) and the tests validate every message against it.

Verdicts: ``OK`` (inspected, no detection above its class threshold), ``NG`` (at least one), ``NOT_INSPECTED``
(the frame was quarantined: ``quarantine.reason`` says why). An ``NG`` whose detections match an alarm rule also
raises an *alarm* (``alarm.<station>.<severity>``) with its own gap-free sequence in the same session; the alarm
message is derived from the result by :func:`alarm_message`, so live and replayed alarms are byte-identical.
"""
from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PrivateAttr, WithJsonSchema

SCHEMA_VERSION = 2  # 2: result messages; alarms gained result_seq/model/template/image/rule; paged replay
BOX_FORMAT = "xyxy-pixels"

Severity = Literal["info", "warning", "critical"]
UtcTime = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(timespec="microseconds"), return_type=str),
                    WithJsonSchema({"type": "string", "format": "date-time"})]


class Verdict(str, Enum):
    OK = "OK"
    NG = "NG"
    NOT_INSPECTED = "NOT_INSPECTED"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class ModelRef(_Message):
    """The detector that judged the frame (``models`` table row)."""

    id: int = Field(description="models.id in the station database")
    sha256: str = Field(description="hash of the deployed model (artifact metadata or checkpoint file)")
    backend: str = Field(description="onnxruntime | tensorrt | openvino | torch | difference")
    precision: str = Field(description="fp32 | fp16 | int8 | n/a")


class TemplateRef(_Message):
    """The reference image the frame was compared with (``templates`` table row)."""

    id: int = Field(description="templates.id")
    version: int = Field(ge=1, description="version of this (camera, position) template")


class ImageSize(_Message):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class AlarmRuleRef(_Message):
    """The ``alarm_rules`` entry that set the frame's severity (the first rule of the highest severity)."""

    index: int = Field(ge=0, description="position in the station config's alarm_rules list")
    class_name: str = Field(alias="class", description="class the rule matches ('*' = any)")
    severity: Severity
    min_score: float
    min_area: float


class DetectionResult(_Message):
    class_name: str = Field(alias="class")
    class_id: int
    score: float = Field(ge=0.0, le=1.0)
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2], see box_format")
    area: float = Field(ge=0.0, description="box area in square pixels")
    severity: Severity | None = Field(
        description="highest severity among the alarm rules this detection matches; null: none matches")
    rule: int | None = Field(description="index of that alarm rule in alarm_rules; null: none")


class QuarantineInfo(_Message):
    reason: str = Field(pattern=r"^[a-z][a-z0-9_]*$",
                        description="machine-readable quarantine reason (docs/operations.md lists them)")
    message: str = Field(description="human-readable detail")


class _FrameFacts(_Message):
    """What results and alarms both say about the frame."""

    schema_version: Literal[2] = Field(SCHEMA_VERSION, alias="schema", description="message schema version")
    type: Literal["result", "alarm"]
    station: str
    session: str = Field(description="bus session (one daemon run) the message was committed in")
    seq: int = Field(ge=1, description="gap-free per session and message type: 1, 2, 3, ... in commit order")
    camera: str
    position: str | None = Field(description="from the file name; null when the name did not match the pattern")
    serial: str | None
    frame: str = Field(description="the frame's file name in the drop folder")
    frame_id: int = Field(description="frames.id in the station database")
    sha256: str | None = Field(pattern=r"^[0-9a-f]{64}$", description="of the file's bytes as read; null when the file "
                               "was refused unread (a symlink, a FIFO: quarantine reasons symlink, not_regular)")
    captured_at: UtcTime | None = Field(
        description="capture time from the file name's timestamp group (UTC, ISO 8601 with zone); null: none")
    processed_at: UtcTime = Field(description="when the result was committed (UTC, ISO 8601 with zone)")
    model: ModelRef | None = Field(description="the detector; null only if no model is registered")
    template: TemplateRef | None = Field(description="null when the frame was not compared with a template")
    image: ImageSize | None = Field(description="decoded size; null when the frame was not decoded")
    box_format: Literal["xyxy-pixels"] = Field(BOX_FORMAT, description=(
        "detections[].box is [x1, y1, x2, y2] in pixels of the original (full-size) frame, origin at the "
        "top-left corner, x to the right, y downwards; continuous coordinates, so a box covering exactly pixel "
        "(0, 0) is [0, 0, 1, 1]"))
    detections: list[DetectionResult] = Field(description="kept detections (above their class thresholds)")
    severity: Severity | None = Field(description="worst severity among the detections; null: no alarm rule matched")
    rule: AlarmRuleRef | None = Field(description="the alarm rule that fired; null: none (OK, NOT_INSPECTED, or "
                                                  "NG below every alarm rule)")
    shift: tuple[float, float] | None = Field(description="template alignment shift [dx, dy] in pixels")
    stored: str | None = Field(description="where the frame file was moved (processed/ or quarantine/)")
    annotated: str | None = Field(description="annotated image, when one was written")


class FrameResult(_FrameFacts):
    """``result.<station>.<camera>``: the verdict on one frame, as committed. One per frame, whatever happened."""

    type: Literal["result"] = "result"
    verdict: Verdict
    received_at: UtcTime = Field(description="when the daemon took the file (UTC, ISO 8601 with zone)")
    alarm_seq: int | None = Field(ge=1, description="seq of the alarm this result raised (same session); null: none")
    quarantine: QuarantineInfo | None = Field(description="why the frame was not inspected (NOT_INSPECTED only)")

    _json: str | None = PrivateAttr(None)
    _alarm_json: str | None = PrivateAttr(None)
    _detected_at: float = PrivateAttr(0.0)

    def to_json(self) -> str:
        """The bus message (compact JSON); computed once, the same text goes to the database and every output."""
        if self._json is None:
            self._json = self.model_dump_json(by_alias=True)
        return self._json

    def alarm_json(self) -> str | None:
        """The alarm message this result raised (None: none), computed once like :meth:`to_json`."""
        if self.alarm_seq is None:
            return None
        if self._alarm_json is None:
            self._alarm_json = alarm_message(self).model_dump_json(by_alias=True)
        return self._alarm_json

    @property
    def topic(self) -> str:
        return f"result.{self.station}.{self.camera}"

    @property
    def result_id(self) -> str:
        """``<session>:<seq>``: how GetResult (OPC UA) and the replay endpoint name a result."""
        return f"{self.session}:{self.seq}"

    @property
    def detected_at(self) -> float:
        """``time.perf_counter()`` when detection finished (0.0: not detected); outputs measure latency from it."""
        return self._detected_at

    def with_detected_at(self, t: float) -> "FrameResult":
        self._detected_at = t
        return self


class AlarmMessage(_FrameFacts):
    """``alarm.<station>.<severity>``: an NG result that matched an alarm rule, with its own gap-free ``seq``."""

    type: Literal["alarm"] = "alarm"
    position: str
    severity: Severity
    result_seq: int = Field(ge=1, description="seq of the frame's result message (same session)")


_SHARED = tuple(name for name in _FrameFacts.model_fields if name not in ("schema_version", "type", "seq"))


def alarm_message(result: FrameResult) -> AlarmMessage:
    if result.alarm_seq is None:
        raise ValueError(f"result {result.result_id} raised no alarm")
    return AlarmMessage(seq=result.alarm_seq, result_seq=result.seq,
                        **{name: getattr(result, name) for name in _SHARED})

"""Helpers of the outputs tests: committed-looking FrameResults without running a daemon."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Callable

import pytest

from inspector.outputs.result import (AlarmRuleRef, DetectionResult, FrameResult, ImageSize, ModelRef,
                                      QuarantineInfo, TemplateRef, Verdict)


def build_result(seq: int, verdict: Verdict = Verdict.OK, alarm_seq: int | None = None, session: str = "session-1",
                 station: str = "st", camera: str = "cam1", frame_id: int | None = None) -> FrameResult:
    now = datetime.now(timezone.utc)
    ng = verdict is Verdict.NG
    detections = [DetectionResult(class_name="short", class_id=1, score=0.91, box=(10.0, 20.0, 30.5, 44.0),
                                  area=492.0, severity="warning" if alarm_seq else None, rule=0 if alarm_seq else None)
                  ] if ng else []
    return FrameResult(
        station=station, camera=camera, session=session, seq=seq, verdict=verdict, frame=f"P00_s{seq}.png",
        frame_id=frame_id or seq, position="P00", serial=f"s{seq}", sha256=uuid.uuid4().hex * 2, captured_at=None,
        received_at=now, processed_at=now, model=ModelRef(id=1, sha256="ab" * 32, backend="difference", precision="n/a"),
        template=TemplateRef(id=3, version=2), image=ImageSize(width=64, height=48), detections=detections,
        severity="warning" if alarm_seq else None,
        rule=AlarmRuleRef(index=0, class_name="*", severity="warning", min_score=0.5, min_area=0.0) if alarm_seq else None,
        alarm_seq=alarm_seq,
        quarantine=QuarantineInfo(reason="corrupt", message="truncated .png file") if verdict is Verdict.NOT_INSPECTED
        else None, shift=(1.5, -0.5), stored=None, annotated=None)


@pytest.fixture
def make_result() -> Callable[..., FrameResult]:
    return build_result

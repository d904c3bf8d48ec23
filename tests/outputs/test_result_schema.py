"""The result message contract: the committed JSON Schema files are generated from the models the daemon sends
with, and they accept what the daemon sends and refuse what it must never send."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from inspector.outputs.result import FrameResult, Verdict, alarm_message
from inspector.outputs.schema import SCHEMA_DIR, generate, main


def test_committed_schema_files_are_current() -> None:
    generated = generate()
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.schema.json")) == sorted(generated)
    for name, text in generated.items():
        assert (SCHEMA_DIR / name).read_text() == text, f"{name} is stale: run python -m inspector.outputs.schema"
    assert main(["--check"]) == 0


@pytest.mark.parametrize("verdict, alarm_seq", [(Verdict.OK, None), (Verdict.NG, None), (Verdict.NG, 4),
                                                (Verdict.NOT_INSPECTED, None)])
def test_every_verdict_validates_and_round_trips(make_result, validate_bus_message, verdict, alarm_seq) -> None:
    result = make_result(7, verdict, alarm_seq=alarm_seq)
    message = validate_bus_message(json.loads(result.to_json()))
    assert message["verdict"] == verdict.value and message["type"] == "result" and message["seq"] == 7
    assert FrameResult.model_validate_json(result.to_json()).model_dump() == result.model_dump()  # GetResult, page
    assert result.topic == "result.st.cam1" and result.result_id == "session-1:7"
    if alarm_seq is None:
        assert result.alarm_json() is None
        with pytest.raises(ValueError, match="raised no alarm"):
            alarm_message(result)
    else:
        alarm = validate_bus_message(json.loads(result.alarm_json()))
        assert (alarm["seq"], alarm["result_seq"], alarm["type"]) == (alarm_seq, 7, "alarm")
        assert {k: alarm[k] for k in ("frame", "sha256", "detections", "model", "template", "rule")} == {
            k: message[k] for k in ("frame", "sha256", "detections", "model", "template", "rule")}


def test_times_carry_their_zone(make_result) -> None:
    message = json.loads(make_result(1).to_json())
    assert message["processed_at"].endswith("+00:00") and message["received_at"].endswith("+00:00")


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m.pop("verdict"), "verdict"),
    (lambda m: m.update(verdict="MAYBE"), "verdict"),
    (lambda m: m.update(seq=0), "seq"),
    (lambda m: m.update(sha256="xyz"), "sha256"),
    (lambda m: m.update(processed_at="2026-11-26T10:00:00"), "processed_at"),  # no zone
    (lambda m: m["detections"][0].update(box=[1, 2, 3]), "box"),
    (lambda m: m["detections"][0].update(score=1.5), "score"),
    (lambda m: m.update(box_format="cxcywh"), "box_format"),
    (lambda m: m.update(extra_field=1), "extra_field"),
    (lambda m: m.update(quarantine={"reason": "Not An Enum Value", "message": "x"}), "reason"),
])
def test_schema_refuses_malformed_messages(make_result, validate_bus_message, mutate, field) -> None:
    good = json.loads(make_result(3, Verdict.NG, alarm_seq=1).to_json())
    validate_bus_message(good)
    bad = copy.deepcopy(good)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError) as info:
        validate_bus_message(bad)
    assert field in str(info.value.message) + "".join(str(p) for p in info.value.absolute_path) + str(info.value), \
        info.value

"""The dispatcher in front of every output: once per result, in order, to every output; one broken output does
not cost the others their results; a failed start leaves nothing running."""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest

from inspector.outputs import Output, OutputContext, OutputDispatcher, SessionInfo, StationState
from inspector.outputs.result import FrameResult


class Recorder:
    def __init__(self, name: str, log: list[tuple[str, str, object]], fail_on: str | None = None) -> None:
        self.name, self.log, self.fail_on = name, log, fail_on
        self.alive = False

    def _record(self, call: str, arg: object = None) -> None:
        self.log.append((self.name, call, arg))
        if call == self.fail_on:
            raise RuntimeError(f"{self.name} broken in {call}")

    def start(self, context: OutputContext) -> None:
        self._record("start", context.session.id)
        self.alive = True

    def publish(self, result: FrameResult) -> None:
        self._record("publish", result.seq)

    def state_changed(self, state: StationState) -> None:
        self._record("state", state.state)

    def stop(self) -> None:
        self.alive = False
        self._record("stop")

    def is_alive(self) -> bool:
        return self.alive


def _context() -> OutputContext:
    return OutputContext("st", SessionInfo("s-1", datetime.now(timezone.utc)), None)  # type: ignore[arg-type]


def test_every_result_reaches_every_output_once_in_commit_order(make_result) -> None:
    log: list[tuple[str, str, object]] = []
    a, b = Recorder("a", log), Recorder("b", log)
    assert isinstance(a, Output)
    outputs = OutputDispatcher([a, b])
    outputs.start(_context())
    for seq in (1, 2, 3):
        outputs.publish(make_result(seq))
    outputs.state_changed(StationState("degraded", {"detector": "hung"}))
    outputs.stop()
    assert log == [("a", "start", "s-1"), ("a", "state", "healthy"), ("b", "start", "s-1"), ("b", "state", "healthy"),
                   ("a", "publish", 1), ("b", "publish", 1), ("a", "publish", 2), ("b", "publish", 2),
                   ("a", "publish", 3), ("b", "publish", 3), ("a", "state", "degraded"), ("b", "state", "degraded"),
                   ("b", "stop", None), ("a", "stop", None)]
    assert outputs.published == 3 and outputs["b"] is b and "a" in outputs and "c" not in outputs


def test_a_broken_output_is_counted_and_the_others_still_get_every_result(make_result, caplog) -> None:
    log: list[tuple[str, str, object]] = []
    broken, good = Recorder("broken", log, fail_on="publish"), Recorder("good", log)
    outputs = OutputDispatcher([broken, good])
    outputs.start(_context())
    with caplog.at_level(logging.ERROR, logger="inspector.outputs"):
        for seq in range(1, 6):
            outputs.publish(make_result(seq))
    assert [arg for name, call, arg in log if name == "good" and call == "publish"] == [1, 2, 3, 4, 5]
    assert outputs.errors["broken"] == 5 and outputs.errors["good"] == 0
    assert len([r for r in caplog.records if "output failed" in r.getMessage()]) == 1  # rate-limited, not 5 lines
    assert outputs.is_alive() == {"broken": True, "good": True}
    outputs.stop()


def test_a_failed_start_stops_the_outputs_already_started() -> None:
    log: list[tuple[str, str, object]] = []
    first, failing, never = Recorder("first", log), Recorder("failing", log, fail_on="start"), Recorder("never", log)
    outputs = OutputDispatcher([first, failing, never])
    with pytest.raises(RuntimeError, match="failing broken in start"):
        outputs.start(_context())
    assert ("first", "stop", None) in log and not any(name == "never" for name, *_ in log)
    assert not first.alive


def test_output_names_are_unique() -> None:
    with pytest.raises(ValueError, match="duplicate output name"):
        OutputDispatcher([Recorder("x", []), Recorder("x", [])])

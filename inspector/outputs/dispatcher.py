"""One front for all outputs: the pipeline and the daemon talk to this, never to a particular channel.

Like Frigate's ``comms`` dispatcher in front of MQTT and WebSocket: the result is committed once and fanned out to
every output in the order they were configured. A failing output is logged and counted, and the others still get
the result; the database row is what an output's peers fetch a missed result from.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Iterator, Sequence

from inspector.logging_json import log_fields
from inspector.outputs.base import Output, OutputContext, StationState
from inspector.outputs.result import FrameResult

log = logging.getLogger("inspector.outputs")
ERROR_LOG_INTERVAL_S = 10.0  # a broken output logs its exception at most this often (plus a count)


class OutputDispatcher:
    def __init__(self, outputs: Sequence[Output] = ()) -> None:
        names = [o.name for o in outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"outputs: duplicate output name(s) {dupes}")
        self._outputs: list[Output] = list(outputs)
        self._started: list[Output] = []
        self.state = StationState()
        self.errors: Counter[str] = Counter()  # per output name: publish/state_changed calls that raised
        self.published = 0
        self._last_error_log: dict[str, float] = {}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, context: OutputContext) -> None:
        """Start every output in order; if one fails, stop those already started and re-raise."""
        for output in self._outputs:
            try:
                output.start(context)
            except BaseException:
                self.stop()
                raise
            self._started.append(output)
            self._call(output, "state_changed", self.state)

    def stop(self) -> None:
        """Stop in reverse start order; one output failing to stop does not keep the others running."""
        while self._started:
            output = self._started.pop()
            try:
                output.stop()
            except Exception:  # noqa: BLE001
                log.exception("output failed to stop", **log_fields(output=output.name))

    # -- fan-out -------------------------------------------------------------------------------------------
    def publish(self, result: FrameResult) -> None:
        """Hand one committed result to every running output (the caller holds the commit order)."""
        self.published += 1
        for output in self._started:
            self._call(output, "publish", result)

    def state_changed(self, state: StationState) -> None:
        self.state = state
        for output in self._started:
            self._call(output, "state_changed", state)

    def _call(self, output: Output, method: str, arg: object) -> None:
        try:
            getattr(output, method)(arg)
        except Exception:  # noqa: BLE001 - the result is committed; one channel must not fail the others
            self.errors[output.name] += 1
            now = time.monotonic()
            if now - self._last_error_log.get(output.name, -ERROR_LOG_INTERVAL_S) >= ERROR_LOG_INTERVAL_S:
                self._last_error_log[output.name] = now
                log.exception("output failed", **log_fields(output=output.name, call=method,
                                                           errors=self.errors[output.name]))

    # -- observation ---------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Output]:
        return iter(self._outputs)

    def __getitem__(self, name: str) -> Output:
        for output in self._outputs:
            if output.name == name:
                return output
        raise KeyError(f"no output '{name}' (have {[o.name for o in self._outputs]})")

    def __contains__(self, name: object) -> bool:
        return any(o.name == name for o in self._outputs)

    def is_alive(self) -> dict[str, bool]:
        return {o.name: o in self._started and o.is_alive() for o in self._outputs}

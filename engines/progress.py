"""Step log lines for long export/build jobs.

``rddn compile`` runs for tens of seconds to minutes (export, ONNX checks, a self-check inference, a TensorRT
build); a silent terminal looks hung, and a tqdm bar over five uneven steps says little. One line per step with
its elapsed time says what is happening and where the time went.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, TextIO


class StepLog:
    """Numbered step lines on a stream (stderr by default, so stdout stays parseable)."""

    def __init__(self, total: int, stream: TextIO | None = None, prefix: str = "compile") -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self.index = 0
        self.started = time.perf_counter()

    def info(self, message: str) -> None:
        print(f"[{self.prefix}]       {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Print ``[compile i/n] title ...`` then ``done in X s`` (or ``FAILED``) when the block ends."""
        self.index += 1
        head = f"[{self.prefix} {self.index}/{self.total}] {title}"
        print(f"{head} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            print(f"{head}: FAILED after {time.perf_counter() - start:.1f} s", file=self.stream, flush=True)
            raise
        print(f"{head}: done in {time.perf_counter() - start:.1f} s", file=self.stream, flush=True)

    def finish(self, message: str) -> None:
        print(f"[{self.prefix}] {message} (total {time.perf_counter() - self.started:.1f} s)", file=self.stream,
              flush=True)

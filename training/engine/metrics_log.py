"""JSON-lines metrics log: one object per line, appended and flushed as it happens.

Why JSON lines: a crashed or interrupted run keeps every line written so far, ``--resume`` simply appends, and
any tool (jq, pandas.read_json(lines=True)) reads it without a parser of ours.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    """JSON cannot hold NaN/inf; write them as strings so the line stays valid and the problem stays visible."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Appends records of a ``type`` (``iter``, ``epoch``, ``eval``, ``stop``) with a wall-clock timestamp."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"type": kind, "time": round(time.time(), 3), **_clean(fields)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics log (used by tests and the results table)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]

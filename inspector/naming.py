"""Frame file names: which files are frames at all, and what their names say (position, serial, timestamp).

Writers that write a temporary name and rename are common on lines; the temporary names must never be taken
as frames, so the rules for "this is a temp file" live here, in one place, for the watcher and reconciler.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

TEMP_PREFIXES = (".", "~", "_tmp", "tmp_")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~", ".swp", ".lock")
_TIMESTAMP_FORMATS = ("%Y%m%dT%H%M%S", "%Y%m%dT%H%M%S.%f", "%Y%m%d%H%M%S", "%Y-%m-%dT%H-%M-%S", "%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class FrameName:
    position: str
    serial: str | None
    timestamp: datetime | None


class FrameNameError(ValueError):
    """The file name does not match the camera's pattern (quarantine reason)."""


def is_temp_name(name: str) -> bool:
    lower = name.lower()
    return lower.startswith(TEMP_PREFIXES) or lower.endswith(TEMP_SUFFIXES) or lower.endswith(".reason.json")


def is_candidate(path: Path | str, extensions: list[str]) -> bool:
    """A file the daemon should look at: a frame extension and not a temporary name.

    Files that match this but not the camera pattern are still taken and quarantined (a misnamed frame is a
    problem somebody must see); files that do not match this are silently ignored (other tools' files)."""
    name = Path(path).name
    return not is_temp_name(name) and Path(name).suffix.lower() in extensions


def _parse_timestamp(text: str) -> datetime | None:
    for fmt in _TIMESTAMP_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    if text.isdigit() and len(text) in (10, 13):  # unix seconds / milliseconds
        value = int(text) / (1000 if len(text) == 13 else 1)
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return None


def parse_frame_name(pattern: re.Pattern[str] | str, name: str) -> FrameName:
    """Apply the camera's regex; ``position`` is mandatory, ``serial``/``timestamp`` optional."""
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    match = regex.match(name)
    if match is None:
        raise FrameNameError(f"file name '{name}' does not match the camera pattern {regex.pattern!r}")
    groups = match.groupdict()
    stamp = groups.get("timestamp")
    return FrameName(position=groups["position"], serial=groups.get("serial"),
                     timestamp=_parse_timestamp(stamp) if stamp else None)

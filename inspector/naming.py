"""Frame file names: which files are frames at all, and what their names say (position, serial, timestamp).

Writers that write a temporary name and rename are common on lines; the temporary names must never be taken
as frames, so the rules for "this is a temp file" live here, in one place, for the watcher and reconciler.

What a name says is validated here, before anything reaches the database: a field longer than its column, a
name that is not UTF-8 (undecodable bytes) or carries control characters, or a timestamp that does not parse is
a ``FrameNameError`` (quarantine ``bad_name``), never a database error that looks like an outage.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from pathlib import Path

TEMP_PREFIXES = (".", "~", "_tmp", "tmp_")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~", ".swp", ".lock")
# Naive forms are in the camera's ``timestamp_timezone``; the %z forms carry their own UTC offset (+0100, +01:00, Z).
_NAIVE_FORMATS = ("%Y%m%dT%H%M%S", "%Y%m%dT%H%M%S.%f", "%Y%m%d%H%M%S", "%Y-%m-%dT%H-%M-%S", "%Y-%m-%dT%H:%M:%S")
_OFFSET_FORMATS = tuple(f + "%z" for f in _NAIVE_FORMATS)
MAX_POSITION_LEN = 128  # = the database columns (inspector/db/models.py uses these)
MAX_SERIAL_LEN = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def parse_timestamp(text: str, zone: tzinfo = timezone.utc) -> datetime | None:
    """An aware UTC datetime from a name's timestamp: with its own offset, or naive in ``zone``, or unix
    seconds/milliseconds; None when no known form matches."""
    for fmt in _OFFSET_FORMATS:
        try:
            return datetime.strptime(text, fmt).astimezone(timezone.utc)
        except ValueError:
            continue
    for fmt in _NAIVE_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=zone).astimezone(timezone.utc)
        except ValueError:
            continue
    if text.isdigit() and len(text) in (10, 13):  # unix seconds / milliseconds
        value = int(text) / (1000 if len(text) == 13 else 1)
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return None


def printable_name(name: str) -> str:
    """``name`` as text any database and log takes: undecodable bytes as ``\\xNN``, control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _check_field(what: str, value: str, limit: int | None) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameNameError(f"{what} is not valid UTF-8 (undecodable bytes in the file name)") from None
    if _CONTROL.search(value):
        raise FrameNameError(f"{what} contains control characters")
    if limit is not None and len(value) > limit:
        raise FrameNameError(f"{what} has {len(value)} characters (limit {limit})")


def parse_frame_name(pattern: re.Pattern[str] | str, name: str, zone: tzinfo = timezone.utc) -> FrameName:
    """Apply the camera's regex; ``position`` is mandatory, ``serial``/``timestamp`` optional. Every field is
    validated against what the database stores (length, UTF-8, no control characters)."""
    _check_field("file name", name, None)
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    match = regex.match(name)
    if match is None:
        raise FrameNameError(f"file name '{name}' does not match the camera pattern {regex.pattern!r}")
    groups = match.groupdict()
    position, serial, stamp = groups["position"], groups.get("serial") or None, groups.get("timestamp")
    if not position:
        raise FrameNameError("empty position")
    _check_field("position", position, MAX_POSITION_LEN)
    if serial is not None:
        _check_field("serial", serial, MAX_SERIAL_LEN)
    timestamp = None
    if stamp:
        timestamp = parse_timestamp(stamp, zone)
        if timestamp is None:
            raise FrameNameError(f"timestamp '{stamp}' is in no known form (e.g. 20260131T120000, "
                                 "20260131T120000+0100, unix seconds)")
    return FrameName(position=position, serial=serial, timestamp=timestamp)

"""File-descriptor headroom: a connection flood must never take the descriptors the frame pipeline needs.

Every frame read, SQLite file, inotify watch, quarantine move and network connection is a file descriptor, and
a process has a limit (``RLIMIT_NOFILE``; 1024 by default outside systemd). Three layers keep inspection going:

1. At start the daemon raises its soft limit to the hard limit (the systemd unit sets ``LimitNOFILE=65536``)
   and refuses to start when the limit cannot hold the pipeline's reserve plus every listener's connection cap
   (:func:`ensure_fd_headroom`); below :data:`RECOMMENDED_FDS` it warns.
2. Listeners are capped (``bus.connections``, the metrics server's bounded pool), so connections can use at
   most their share and the pipeline keeps the rest (:func:`fd_budget`).
3. When a frame still fails for lack of descriptors (another process of the same user, a leak), the frame is
   kept for a retry, never quarantined, and health says why: :class:`ResourceExhausted`.
"""
from __future__ import annotations

import errno
import os
import resource
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspector.config import StationConfig

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
RECOMMENDED_FDS = 4096
BASE_RESERVE = 192  # interpreter, libraries, DB connection pool, logs, ONNX Runtime / CUDA
PER_WORKER = 8  # a frame being read, its quarantine/processed move, its annotated image
PER_CAMERA = 8  # observer (inotify / polling scans), reconcile listing
METRICS_FDS = 24  # the metrics server's threads + pending queue + listener
FLOOD_MARGIN = 64  # connections accepted before the guard sheds them


class ResourceExhausted(RuntimeError):
    """A frame could not be processed for lack of a system resource (file descriptors); it is kept and retried."""


@dataclass(frozen=True)
class FdBudget:
    reserved: int  # for the frame pipeline
    listeners: int  # every listener at its connection cap

    @property
    def required(self) -> int:
        return self.reserved + self.listeners


def fd_budget(cfg: "StationConfig") -> FdBudget:
    """What ``cfg`` needs: the pipeline's reserve and the listeners' caps (PUB and replay at
    ``bus.connections.max_connections`` each, the metrics server, a margin for a burst before shedding)."""
    reserved = BASE_RESERVE + PER_WORKER * cfg.workers + PER_CAMERA * len(cfg.cameras)
    listeners = 2 * cfg.bus.connections.max_connections + FLOOD_MARGIN
    if cfg.metrics.port is not None:
        listeners += METRICS_FDS
    return FdBudget(reserved, listeners)


def fd_limits() -> tuple[int, int]:
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fd_count() -> int:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # the listing's own descriptor
        except OSError:
            continue
    return -1


def ensure_fd_headroom(cfg: "StationConfig") -> tuple[int, list[str]]:
    """Raise the soft descriptor limit to the hard one; returns (limit, warnings) or raises RuntimeError when the
    limit cannot hold :func:`fd_budget`."""
    soft, hard = fd_limits()
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # some sandboxes refuse; the checks below use what we have
    budget = fd_budget(cfg)
    if soft < budget.required:
        raise RuntimeError(
            f"file-descriptor limit {soft} is below the {budget.required} this station needs "
            f"({budget.reserved} reserved for the frame pipeline + {budget.listeners} for listeners at "
            f"bus.connections.max_connections={cfg.bus.connections.max_connections}); raise the limit "
            "(LimitNOFILE= in the systemd unit, ulimit -n) or lower bus.connections.max_connections")
    warnings = []
    if soft < RECOMMENDED_FDS:
        warnings.append(f"file-descriptor limit {soft} is low (recommended >= {RECOMMENDED_FDS}; the systemd unit "
                        "sets LimitNOFILE=65536)")
    return soft, warnings


def _resource_errno(exc: BaseException) -> int | None:
    """EMFILE/ENFILE when ``exc`` or what caused it is a lack of descriptors; SQLite's "unable to open
    database file" counts as EMFILE while the process is at its descriptor limit."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in RESOURCE_ERRNOS:
            return current.errno
        if isinstance(current, sqlite3.OperationalError) and "unable to open" in str(current):
            return errno.EMFILE if fd_pressure() is not None else None
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return None


def is_resource_exhaustion(exc: BaseException) -> bool:
    return _resource_errno(exc) is not None


def fd_pressure(threshold: float = 0.95) -> str | None:
    """A text for health when this process uses more than ``threshold`` of its descriptor limit, else None."""
    used, (soft, _) = open_fd_count(), fd_limits()
    if used < 0 or soft <= 0 or used < threshold * soft:
        return None
    return f"{used} of {soft} file descriptors in use"


def describe(exc: BaseException) -> str:
    """The health reason for a resource failure: what ran out, against which limit (stable text, so health
    changes once, not at every retry)."""
    code = _resource_errno(exc) or errno.EMFILE
    scope = "descriptor limit " + str(fd_limits()[0]) if code == errno.EMFILE else "system-wide file table"
    return f"frames cannot be processed: {os.strerror(code)} ({scope})"

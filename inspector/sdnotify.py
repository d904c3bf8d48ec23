"""systemd's notify-socket protocol, spoken directly (no libsystemd), plus a progress-gated watchdog pinger.

Why by hand: the daemon's base install must not need libsystemd/python-systemd, and the protocol is one
datagram of ``KEY=VALUE`` lines sent to the AF_UNIX socket named in ``$NOTIFY_SOCKET`` (a leading ``@`` means a
Linux abstract socket, i.e. a leading NUL byte). Outside systemd (``NOTIFY_SOCKET`` unset) every call is a no-op,
so the daemon runs the same from a shell, a test, or a unit.

The watchdog contract with systemd (``WatchdogSec=``) is only useful if ``WATCHDOG=1`` means "the pipeline is
making progress", not "the process still exists". :class:`WatchdogPinger` therefore pings only while a health
probe (frames moving, or nothing to do; observers alive) says so; a wedged pipeline stops the pings and systemd
restarts the unit.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def socket_address(name: str) -> str | bytes:
    """Map ``$NOTIFY_SOCKET`` to a ``sendto`` address: ``@name`` is the abstract socket ``\\0name``."""
    if not name:
        raise ValueError(f"{NOTIFY_SOCKET_ENV} is empty")
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if not name.startswith("/"):
        raise ValueError(f"{NOTIFY_SOCKET_ENV}={name!r}: expected an absolute path or an @abstract name")
    return name


def format_message(fields: Mapping[str, object]) -> bytes:
    """``{"READY": 1, "STATUS": "x"}`` -> ``b"READY=1\\nSTATUS=x"``; newlines in values would break the protocol."""
    lines = []
    for key, value in fields.items():
        text = str(value)
        if "\n" in text:
            raise ValueError(f"sd_notify field {key} contains a newline: {text!r}")
        lines.append(f"{key}={text}")
    return "\n".join(lines).encode()


class SdNotifier:
    """Sends notify messages; a silent no-op when the service manager gave no socket.

    Send errors are logged, never raised: losing a status line must not take the inspection line down (a lost
    ``WATCHDOG=1`` is covered by the next one; a lost ``READY=1`` shows up as a start timeout in the journal).
    """

    def __init__(self, notify_socket: str | None = None) -> None:
        name = notify_socket if notify_socket is not None else os.environ.get(NOTIFY_SOCKET_ENV, "")
        self._address = socket_address(name) if name else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send one datagram; returns True when it was handed to the socket."""
        if self._sock is None or self._address is None:
            return False
        payload = format_message(fields)
        try:
            with self._lock:
                self._sock.sendto(payload, self._address)
            return True
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self._address, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        """READY=1: only call after model, DB and bus are up (systemd then considers the start finished)."""
        fields: dict[str, object] = {"READY": 1, "MAINPID": os.getpid()}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for more start/stop time, e.g. while a TensorRT engine is built."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings systemd expects (half of ``WatchdogSec``), or None when no watchdog is set.

    ``WATCHDOG_PID`` (when present) must be us: a child process must not ping for its parent.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        raise ValueError(f"WATCHDOG_USEC={usec!r} is not an integer number of microseconds") from None
    if value <= 0:
        return None
    return value / 1_000_000 / 2


@dataclass(frozen=True)
class PipelineSnapshot:
    """What the watchdog needs to judge progress: monotone processed count, backlog, observer liveness."""

    frames_done: int
    queue_depth: int
    observers_alive: bool = True
    busy: bool = False  # a frame is in flight right now (decode/detect/commit)


class ProgressMonitor:
    """Decides "is the pipeline making progress?" from successive snapshots.

    Healthy when observers are alive and either frames completed since the last check, or there is nothing to do
    (empty queue, nothing in flight). Work waiting with no completion for longer than ``stall_seconds`` is a
    wedge. The grace period keeps one slow frame (a long inference) from counting as a wedge.
    """

    def __init__(
        self,
        snapshot: Callable[[], PipelineSnapshot],
        stall_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stall_seconds <= 0:
            raise ValueError(f"stall_seconds must be > 0, got {stall_seconds}")
        self._snapshot = snapshot
        self._stall_seconds = stall_seconds
        self._clock = clock
        self._last_done: int | None = None
        self._last_progress = clock()
        self.reason = "starting"

    def check(self) -> bool:
        snap = self._snapshot()
        now = self._clock()
        if self._last_done is None or snap.frames_done != self._last_done:
            self._last_done = snap.frames_done
            self._last_progress = now
        idle = snap.queue_depth == 0 and not snap.busy
        if idle:
            self._last_progress = now
        if not snap.observers_alive:
            self.reason = "observer not alive"
            return False
        stalled_for = now - self._last_progress
        if stalled_for > self._stall_seconds:
            self.reason = f"no frame completed for {stalled_for:.1f}s with {snap.queue_depth} queued"
            return False
        self.reason = "idle" if idle else "progressing"
        return True


class WatchdogPinger:
    """Background thread: every ``interval`` s, ping WATCHDOG=1 if the health probe passes, else stay silent.

    ``status`` (optional) is sent as ``STATUS=`` at the same cadence so ``systemctl status`` shows frames and
    queue depth. The thread never raises: a probe failure is logged and treated as unhealthy.
    """

    def __init__(
        self,
        notifier: SdNotifier,
        healthy: Callable[[], bool],
        interval: float,
        status: Callable[[], str] | None = None,
        name: str = "sd-watchdog",
    ) -> None:
        if interval <= 0:
            raise ValueError(f"watchdog interval must be > 0, got {interval}")
        self._notifier = notifier
        self._healthy = healthy
        self._status = status
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.pings = 0
        self.missed = 0

    def start(self) -> "WatchdogPinger":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def tick(self) -> bool:
        """One round (also called directly by tests): returns whether WATCHDOG=1 was sent."""
        try:
            ok = bool(self._healthy())
        except Exception:  # noqa: BLE001 - a broken probe means we cannot vouch for the pipeline
            log.exception("watchdog health probe failed")
            ok = False
        if self._status is not None:
            try:
                self._notifier.status(self._status())
            except Exception:  # noqa: BLE001
                log.exception("watchdog status callback failed")
        if ok:
            self._notifier.watchdog()
            self.pings += 1
        else:
            self.missed += 1
            if self.missed == 1 or self.missed % 10 == 0:
                log.warning("pipeline not progressing: withholding WATCHDOG=1 (%d rounds)", self.missed)
        if ok:
            self.missed = 0
        return ok

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self._interval)

"""Supervised detector: inference with a deadline, degraded state, and backend restarts within a budget.

Why: a detector can hang (a GPU driver stall, a deadlocked runtime) without raising. Without a deadline the
daemon would sit on one frame forever while the line believes inspection is running. The supervisor runs each
backend on its own worker thread (created together with the backend, so thread-affine runtimes such as a CUDA
context live on one thread), waits at most ``timeout_s``, and on a hang:

1. marks the station degraded (the ``on_state`` callback lets the daemon say "inspection unavailable" on the bus),
2. abandons the hung worker (a thread cannot be killed; it is a daemon thread, so it never blocks process exit),
3. builds a fresh backend on a fresh worker at the next call, if the :class:`RestartBudget` allows
   (N restarts per sliding window; beyond that it stays degraded and raises :class:`InspectionUnavailable`
   until the window frees a slot, so a permanently broken GPU does not become a restart storm).

A successful inference after degradation reports "healthy" again. When the budget is exhausted for long, the
systemd watchdog (progress-gated, see ``sdnotify``) restarts the whole process: two layers of supervision.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .backends.base import Detection, DetectorBackend

log = logging.getLogger(__name__)

HEALTHY = "healthy"
DEGRADED = "degraded"


class SupervisionConfig(BaseModel):
    """The ``supervision`` section of a station config: deadlines, restart budget, database retry backoff."""

    model_config = ConfigDict(extra="forbid")

    detect_timeout_s: float = Field(30.0, gt=0)  # one inference; CPU RDDN takes ~1 s, TensorRT ~20 ms
    load_timeout_s: float = Field(900.0, gt=0)  # loading (and possibly building) the backend
    max_restarts: int = Field(3, ge=0)  # backend restarts allowed ...
    restart_window_s: float = Field(600.0, gt=0)  # ... per sliding window
    max_consecutive_errors: int = Field(3, ge=1)
    db_retry_initial_s: float = Field(0.5, gt=0)
    db_retry_max_s: float = Field(30.0, gt=0)
    stall_s: float = Field(120.0, gt=0)  # work waiting and no frame finished this long: stop WATCHDOG=1


class DetectorTimeout(RuntimeError):
    """An inference exceeded its deadline; the frame was not inspected and should be retried."""


class InspectionUnavailable(RuntimeError):
    """No working backend right now (restart budget spent or load failing); frames must wait, not be dropped."""


class RestartBudget:
    """At most ``max_restarts`` restarts in any sliding window of ``window_s`` seconds."""

    def __init__(self, max_restarts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_restarts < 0 or window_s <= 0:
            raise ValueError(f"restart budget needs max_restarts >= 0 and window_s > 0, got {max_restarts}, {window_s}")
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()

    def remaining(self) -> int:
        self._trim(self._clock())
        return self.max_restarts - len(self._times)

    def try_consume(self) -> bool:
        now = self._clock()
        self._trim(now)
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True


@dataclass
class _Job:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    cpu_s: float = 0.0  # the worker thread's CPU time spent in ``fn``


class _Worker:
    """One daemon thread that owns one backend instance and runs jobs for it in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            cpu0 = time.thread_time()
            try:
                job.result = job.fn()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                job.error = exc
            finally:
                job.cpu_s = time.thread_time() - cpu0
                job.done.set()

    def call(self, fn: Callable[[], Any], timeout_s: float) -> Any:
        """Run ``fn`` on the worker; raise TimeoutError if it does not finish within ``timeout_s``."""
        return self.call_timed(fn, timeout_s)[0]

    def call_timed(self, fn: Callable[[], Any], timeout_s: float) -> tuple[Any, float]:
        """``call``, also returning the worker thread's CPU seconds in ``fn``: the caller's own thread CPU time
        only shows the wait, so per-stage CPU figures would otherwise miss the inference itself."""
        job = _Job(fn)
        self._jobs.put(job)
        if not job.done.wait(timeout_s):
            raise TimeoutError(f"worker call exceeded {timeout_s:g}s")
        if job.error is not None:
            raise job.error
        return job.result, job.cpu_s

    def post(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` without waiting (used to close a backend whose worker may be hung)."""
        self._jobs.put(_Job(fn))

    def retire(self) -> None:
        """Ask the thread to exit after its current job (if that job is hung, the thread just stays parked)."""
        self._jobs.put(None)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class _Crew:
    """The worker threads of one backend instance: one for thread-affine backends (a CUDA context lives on one
    thread), ``size`` for backends that declare ``thread_safe`` (the daemon analyses frames concurrently)."""

    def __init__(self, first: _Worker, size: int, generation: int) -> None:
        self.first = first
        self.workers = [first] + [_Worker(name=f"detector-{generation}.{i}") for i in range(1, size)]
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for worker in self.workers:
            self._idle.put(worker)
        self.retired = False

    def acquire(self) -> _Worker | None:
        """An idle worker, waiting for one if all are busy; None once the crew is retired."""
        worker = self._idle.get()
        if worker is None:
            self._idle.put(None)  # pass the wake-up on to the next waiter
        return worker

    def release(self, worker: _Worker) -> None:
        if not self.retired:
            self._idle.put(worker)

    def retire(self) -> None:
        self.retired = True
        for worker in self.workers:
            worker.retire()
        self._idle.put(None)


StateCallback = Callable[[str, str], None]  # (state, reason)


class SupervisedDetector:
    """A ``DetectorBackend`` that wraps another one built by ``factory`` and survives its hangs and crashes.

    ``max_consecutive_errors`` exceptions in a row (not one bad frame) also count as a broken backend and
    trigger a restart. ``on_state(state, reason)`` is called on every healthy<->degraded transition.
    ``concurrency``: how many inferences may run at once on a backend that declares ``thread_safe``.
    """

    def __init__(
        self,
        factory: Callable[[], DetectorBackend],
        timeout_s: float,
        budget: RestartBudget,
        load_timeout_s: float = 600.0,
        max_consecutive_errors: int = 3,
        on_state: StateCallback | None = None,
        on_event: Callable[[str], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if timeout_s <= 0 or load_timeout_s <= 0:
            raise ValueError(f"timeouts must be > 0, got timeout_s={timeout_s}, load_timeout_s={load_timeout_s}")
        self._factory = factory
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s
        self.budget = budget
        self.max_consecutive_errors = max_consecutive_errors
        self._on_state = on_state
        self._on_event = on_event  # metrics hook: "timeout", "exception", "restart"
        self.concurrency = max(1, concurrency)
        self._lock = threading.Lock()  # guards backend/crew swaps and the state, never held during inference
        self._crew: _Crew | None = None
        self._backend: DetectorBackend | None = None
        self._generation = 0
        self._errors_in_row = 0
        self.state = HEALTHY
        self.reason = ""
        self.restarts = 0
        self._calls = threading.local()  # per analysis thread: worker CPU of its last detect
        self._start_backend(initial=True)

    # --- the DetectorBackend surface -------------------------------------------------------------------------
    @property
    def class_names(self) -> Sequence[str]:
        return self._require_backend().class_names

    @property
    def needs_template(self) -> bool:
        return self._require_backend().needs_template

    @property
    def last_detect_cpu_s(self) -> float:
        """CPU seconds the worker thread spent in the calling thread's last ``detect`` (0 before any).
        Per calling thread, so concurrent analysis threads each read their own frame's figure."""
        return getattr(self._calls, "cpu_s", 0.0)

    def detect(
        self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]
    ) -> list[list[Detection]]:
        while True:
            with self._lock:
                if self._backend is None:
                    self._restart_locked()
                crew, backend = self._crew, self._backend
            assert crew is not None and backend is not None
            worker = crew.acquire()
            if worker is not None:
                break  # else: that backend was dropped while we waited; take the new one
        self._calls.cpu_s = 0.0
        try:
            result, self._calls.cpu_s = worker.call_timed(lambda: backend.detect(images, templates), self.timeout_s)
        except TimeoutError:
            self._emit("timeout")
            with self._lock:
                if self._crew is crew:
                    self._abandon_locked(f"inference hung for more than {self.timeout_s:g}s")
            raise DetectorTimeout(f"detector did not answer within {self.timeout_s:g}s") from None
        except Exception:
            crew.release(worker)
            self._emit("exception")
            with self._lock:
                if self._crew is crew:
                    self._errors_in_row += 1
                    if self._errors_in_row >= self.max_consecutive_errors:
                        self._abandon_locked(f"{self._errors_in_row} detector errors in a row")
            raise
        crew.release(worker)
        with self._lock:
            if self._crew is crew:
                self._errors_in_row = 0
                self._set_state(HEALTHY, "inference answered")
        return result

    def close(self) -> None:
        with self._lock:
            self._drop_backend(wait=True)

    def __getattr__(self, name: str) -> Any:
        """Other attributes (``model_sha256``, ``precision``, ...) come from the backend being supervised."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._require_backend(), name)

    # --- internals -------------------------------------------------------------------------------------------
    def _require_backend(self) -> DetectorBackend:
        with self._lock:
            if self._backend is None:
                self._restart_locked()
            assert self._backend is not None
            return self._backend

    def _emit(self, event: str) -> None:
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - metrics must never break inference
                log.exception("supervisor event hook failed")

    def _set_state(self, state: str, reason: str) -> None:
        if state == self.state:
            self.reason = reason  # keep the latest cause for error messages; no transition to announce
            return
        self.state, self.reason = state, reason
        if state == DEGRADED:
            log.warning("detector degraded: %s", reason)
        else:
            log.info("detector healthy again")
        if self._on_state is not None:
            try:
                self._on_state(state, reason)
            except Exception:  # noqa: BLE001
                log.exception("supervisor state callback failed")

    def _start_backend(self, initial: bool = False) -> None:
        self._generation += 1
        worker = _Worker(name=f"detector-{self._generation}")
        try:
            backend = worker.call(self._factory, self.load_timeout_s)
        except TimeoutError:
            worker.retire()
            if initial:
                raise InspectionUnavailable(f"detector backend did not load within {self.load_timeout_s:g}s") from None
            self._set_state(DEGRADED, f"backend load hung for more than {self.load_timeout_s:g}s")
            raise InspectionUnavailable(self.reason) from None
        except Exception as exc:
            worker.retire()
            if initial:
                raise
            self._set_state(DEGRADED, f"backend failed to load: {exc}")
            raise InspectionUnavailable(self.reason) from exc
        size = self.concurrency if getattr(backend, "thread_safe", False) else 1
        self._crew, self._backend = _Crew(worker, size, self._generation), backend
        self._errors_in_row = 0

    def _restart_locked(self) -> None:
        if not self.budget.try_consume():
            raise InspectionUnavailable(
                f"detector restart budget spent ({self.budget.max_restarts} per {self.budget.window_s:g}s): {self.reason}"
            )
        self.restarts += 1
        self._emit("restart")
        log.warning("restarting detector backend (restart %d, %d left in window)", self.restarts, self.budget.remaining())
        self._start_backend()

    def _abandon_locked(self, reason: str) -> None:
        self._set_state(DEGRADED, reason)
        self._drop_backend(wait=False)

    def _drop_backend(self, wait: bool) -> None:
        """Close the backend on its own worker (a hung worker never runs it; the close is then skipped)."""
        crew, backend = self._crew, self._backend
        self._crew, self._backend = None, None
        if crew is None or backend is None:
            return
        if wait:
            try:
                crew.first.call(backend.close, 10.0)
            except Exception:  # noqa: BLE001
                log.exception("detector close failed")
        else:
            crew.first.post(backend.close)
        crew.retire()


class Backoff:
    """Exponential retry delays (``initial_s`` doubling up to ``max_s``), reset on success.

    Used for the database: when SQLite is locked by another writer or PostgreSQL is down, the frame waits and is
    retried after 0.5, 1, 2, 4 ... s instead of being quarantined (the frame is fine; the station is not).
    """

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, factor: float = 2.0) -> None:
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError(f"bad backoff: initial_s={initial_s}, max_s={max_s}, factor={factor}")
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * self.factor ** self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class StationHealth:
    """The station's health: healthy unless some component (detector, database, ...) reports a problem.

    Components report with :meth:`degrade` / :meth:`recover`; every change of the overall state (or of the
    reasons) calls the listeners once, e.g. the bus ("inspection unavailable: database locked"), Prometheus, and
    the systemd STATUS line. Thread-safe: the pipeline worker, the detector supervisor and the bus all report.
    """

    def __init__(self) -> None:
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, dict[str, str]], None]] = []

    def subscribe(self, listener: Callable[[str, dict[str, str]], None]) -> None:
        self._listeners.append(listener)

    @property
    def state(self) -> str:
        with self._lock:
            return DEGRADED if self._problems else HEALTHY

    @property
    def problems(self) -> dict[str, str]:
        with self._lock:
            return dict(self._problems)

    def degrade(self, component: str, reason: str) -> None:
        with self._lock:
            if self._problems.get(component) == reason:
                return
            self._problems[component] = reason
            snapshot = dict(self._problems)
        self._notify(DEGRADED, snapshot)

    def recover(self, component: str) -> None:
        with self._lock:
            if component not in self._problems:
                return
            del self._problems[component]
            snapshot = dict(self._problems)
        self._notify(DEGRADED if snapshot else HEALTHY, snapshot)

    def _notify(self, state: str, problems: dict[str, str]) -> None:
        for listener in list(self._listeners):
            try:
                listener(state, problems)
            except Exception:  # noqa: BLE001 - a failing listener (bus down) must not block the others
                log.exception("health listener failed")

    def as_dict(self) -> dict[str, object]:
        """For heartbeats: ``{"state": ..., "problems": {...}}``."""
        problems = self.problems
        return {"state": DEGRADED if problems else HEALTHY, "problems": problems}

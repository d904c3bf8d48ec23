"""The interface every output implements (ZeroMQ bus, OPC UA, the review page's live view, ...).

The daemon builds the outputs from the station config (``inspector.outputs.build_outputs``), starts them through
one :class:`~inspector.outputs.dispatcher.OutputDispatcher` once the bus session is open, and the pipeline calls
``publish(result)`` once per committed result, in commit order, on the committing thread. Health changes of the
station (detector hung, database down, ...) reach every output through ``state_changed``.

Rules for an output:

- ``publish`` must not block: it runs inside the commit order lock, between the database commit and the file
  move. An output that talks to slow peers hands the result to its own thread or event loop.
- The database is the source of truth: a result an output failed to deliver (peer gone, output restarted, daemon
  killed between commit and publish) is in the ``results`` table with its ``(session, seq)``; outputs offer their
  peers a way to fetch it (replay endpoint, GetResult).
- An exception from an output is logged and counted by the dispatcher; it never fails the frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Protocol, runtime_checkable

from sqlalchemy.orm import Session, sessionmaker

from inspector.db.writer import Transactions
from inspector.outputs.result import FrameResult


@dataclass(frozen=True)
class SessionInfo:
    """This daemon run's bus session and the one before it (so peers can close the previous session's tail)."""

    id: str
    started_at: datetime
    previous_id: str | None = None
    previous_last_seq: int = 0  # the previous session's last alarm seq
    previous_last_result_seq: int = 0


@dataclass(frozen=True)
class StationState:
    """``healthy`` (inspection available) or ``degraded`` (inspection unavailable: ``problems`` says why)."""

    state: str = "healthy"
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def inspection_available(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class OutputContext:
    """What an output gets at start: who we are, the session, the database (read-only use: replay/GetResult),
    the daemon's health summary (heartbeats), the sequence counters (last committed seqs) and the writer for the
    little an output writes (docs/operations.md: one database writer)."""

    station: str
    session: SessionInfo
    factory: sessionmaker[Session]
    health: Callable[[], dict[str, object]] = dict
    last_seqs: Callable[[], tuple[int, int]] = lambda: (0, 0)  # (last alarm seq, last result seq) committed
    writer: Transactions | None = None  # what an output writes through (the daemon's one DbWriter); None: factory

    @property
    def transactions(self) -> Transactions:
        return self.writer if self.writer is not None else self.factory


@runtime_checkable
class Output(Protocol):
    """One channel results leave the station by. ``name`` is unique among the outputs (config section)."""

    name: str

    def start(self, context: OutputContext) -> None:
        """Bind/listen; raise with a message naming the endpoint when that fails (the daemon does not start)."""

    def publish(self, result: FrameResult) -> None:
        """Deliver one committed result (never block; see the module doc)."""

    def state_changed(self, state: StationState) -> None:
        """The station's health changed (also called once after start with the current state)."""

    def stop(self) -> None:
        """Say goodbye to peers if the protocol has a way (death message), release sockets and threads."""

    def is_alive(self) -> bool:
        """False when the output's own threads died (the daemon's health reports it)."""

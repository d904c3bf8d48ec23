"""Birth that arrives: a subscriber connected all along, across daemon restarts (clean and kill -9), sees the
birth of every session, and each birth names the session before it (so the subscriber can replay its tail)."""
from __future__ import annotations

from sqlalchemy import select

from service_harness import wait_until

RESTARTS = 3


def test_a_subscriber_connected_all_along_sees_every_birth(station, bus_listener, validate_bus_message) -> None:
    st = station()
    listener = bus_listener(st.publish_endpoint, topics=(b"status.s1.birth",))  # before the first daemon runs
    sessions: list[str] = []
    for run in range(RESTARTS + 1):
        st.start()
        session = current_session(st)
        sessions.append(session)
        wait_until(lambda: any(m["session"] == session for m in listener.of_type("status.s1.birth")), 15,
                   what=f"the birth of run {run} at the subscriber connected all along")
        if run % 2:
            st.kill9()
        else:
            assert st.stop() == 0
    births = [validate_bus_message(m) for m in listener.of_type("status.s1.birth")]
    firsts = {}
    for birth in births:
        firsts.setdefault(birth["session"], birth)
    assert list(firsts) == sessions, "a session's birth never reached the subscriber"
    for previous, session in zip(sessions, sessions[1:]):
        assert firsts[session]["previous_session"] == previous
    for birth in births:  # repeats (other subscribers' welcomes, reconnects) say the same session start
        assert birth["started_at"] == firsts[birth["session"]]["started_at"]


def current_session(st) -> str:
    from inspector.db.models import BusSession

    with st.factory() as db:
        return str(db.scalar(select(BusSession.id).order_by(BusSession.started_at.desc()).limit(1)))

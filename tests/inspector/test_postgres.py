"""The same daemon on PostgreSQL (migrations at start, idempotent frames, gap-free alarms, replay).

Needs a server: ``eval "$(.ci/postgres.sh)"`` exports RDDN_TEST_POSTGRES_URL. Each test gets its own database."""
from __future__ import annotations

import pytest
from sqlalchemy import select, text

from inspector.db import Alarm, Frame
from inspector.db.migrate import head_revision

pytestmark = pytest.mark.postgres


def test_daemon_on_postgresql(fresh_postgres_url, make_config, start_daemon, frames, tails, wait):
    cfg = make_config(database_url=fresh_postgres_url)
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    for i in range(3):
        frames.drop(drop, f"P00_pg{i}.jpg", 0, defective=i > 0, via_rename=bool(i % 2))
    wait(lambda: daemon.sequencer.last_seq == 2 and daemon.wait_idle(0.1))
    late = tails(daemon, after=0)
    wait(lambda: late.seqs() == [1, 2])
    with daemon.factory() as db:
        frames_ = db.scalars(select(Frame).order_by(Frame.id)).all()
        alarms = db.scalars(select(Alarm).order_by(Alarm.seq)).all()
        assert db.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    assert [f.status for f in frames_] == ["ok", "defective", "defective"]
    assert [a.seq for a in alarms] == [1, 2] and frames_[1].processed_at.tzinfo is not None
    daemon.stop()
    second = start_daemon(cfg, templates=False)  # migrations re-run (no-op), a new session
    assert second.sequencer.session_id != daemon.sequencer.session_id

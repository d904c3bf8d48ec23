"""Fixtures of the service/fault suite; the helpers live in ``service_harness`` (importable from the tests)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_harness import BusListener, StationHarness  # noqa: E402


@pytest.fixture()
def station(tmp_path: Path) -> Iterator[Callable[..., StationHarness]]:
    """Factory fixture: ``station(**kwargs)`` builds a harness; every daemon it started is stopped afterwards."""
    made: list[StationHarness] = []

    def make(**kwargs: object) -> StationHarness:
        h = StationHarness(tmp_path / f"st{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(h)
        return h

    yield make
    for h in made:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait(10)
        if h._factory is not None:
            h._factory.kw["bind"].dispose()


@pytest.fixture()
def bus_listener() -> Iterator[Callable[..., BusListener]]:
    made: list[BusListener] = []

    def make(endpoint: str, **kwargs: object) -> BusListener:
        listener = BusListener(endpoint, **kwargs)  # type: ignore[arg-type]
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


@pytest.fixture()
def fresh_postgres_url() -> Iterator[str]:
    """A new, empty database on the shared test server (``RDDN_TEST_POSTGRES_URL``), dropped afterwards."""
    import os
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("RDDN_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("RDDN_TEST_POSTGRES_URL not set: no PostgreSQL on this machine (.ci/postgres.sh starts one)")
    name = f"rddn_svc_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()

"""Fixtures shared by every test package."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

POSTGRES_URL_VAR = "RDDN_TEST_POSTGRES_URL"
NO_POSTGRES = f"{POSTGRES_URL_VAR} not set: no PostgreSQL on this machine (.ci/postgres.sh starts one)"


def require_postgres_url() -> str:
    """The shared test server's URL, or skip the test with the reason (CI's .ci/run always starts one)."""
    url = os.environ.get(POSTGRES_URL_VAR)
    if not url:
        pytest.skip(NO_POSTGRES)
    return url


@pytest.fixture()
def postgres_url() -> str:
    """The shared test server's URL (skips with the reason where there is none)."""
    return require_postgres_url()


@pytest.fixture()
def fresh_postgres_url() -> Iterator[str]:
    """A new, empty database on the shared test server, dropped afterwards: tests never see each other's rows."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = require_postgres_url()
    name = f"rddn_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()

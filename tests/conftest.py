"""Fixtures shared by every test package."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest
import tqdm

# No tqdm monitor thread in test workers: a worker runs many test files in one process, and the monitor thread a
# progress bar starts (training, quantisation) outlives them; twice a worker aborted inside it (SIGABRT in its
# lock acquire) while later tests ran. The product's processes (rddn train/compile) are short-lived and keep it.
tqdm.tqdm.monitor_interval = 0

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


def _bus_validators() -> dict[str, object]:
    """message type -> a JSON Schema validator from the committed files (inspector/outputs/schemas/)."""
    from datetime import datetime

    from jsonschema import Draft202012Validator, FormatChecker

    from inspector.outputs.schema import load

    formats = FormatChecker()

    @formats.checks("date-time", raises=ValueError)
    def _zoned_iso8601(value: object) -> bool:  # ISO 8601 *with* a zone, as the schema promises
        return not isinstance(value, str) or datetime.fromisoformat(value).tzinfo is not None

    by_file = {name: Draft202012Validator(load(name), format_checker=formats) for name in (
        "frame-result.schema.json", "alarm.schema.json", "status.schema.json", "replay-reply.schema.json")}
    types = {"result": "frame-result.schema.json", "alarm": "alarm.schema.json", "replay": "replay-reply.schema.json",
             "error": "replay-reply.schema.json"}
    return {kind: by_file[types.get(kind, "status.schema.json")]
            for kind in ("result", "alarm", "replay", "error", "birth", "heartbeat", "healthy", "degraded", "death")}


@pytest.fixture(scope="session")
def validate_bus_message():
    """``validate(message)``: the message (a parsed bus/replay JSON object) against its committed JSON Schema;
    raises jsonschema.ValidationError. Returns the message."""
    validators = _bus_validators()

    def validate(message: dict) -> dict:
        validator = validators.get(message.get("type"))  # type: ignore[arg-type]
        assert validator is not None, f"message of unknown type: {message}"
        validator.validate(message)  # type: ignore[attr-defined]
        return message

    return validate

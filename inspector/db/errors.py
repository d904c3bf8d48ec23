"""Which database errors mean "this row is refused" and which mean "the database is not there".

A frame whose row the database refuses (a value too long for its column, an integrity violation, a value the
driver cannot bind) is bad data: it is quarantined (``db_rejected``) at once and the line goes on. Only the
database itself being unavailable (connection refused or lost, pool timeout, locked, disk full, a schema that
does not match) keeps frames waiting and makes the station report ``degraded``. Classifying a row error as an
outage would retry that frame forever and hold up every frame behind it.
"""
from __future__ import annotations

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

# SQLSTATE classes caused by the data of a statement: 22 data exception (value too long, invalid text, out of
# range), 23 integrity constraint violation, 54 program limit exceeded (e.g. an index row too large).
ROW_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
_BIND_ERRORS = (ValueError, TypeError, OverflowError, UnicodeError)


def sqlstate(exc: DBAPIError) -> str | None:
    """The SQLSTATE of a driver error (psycopg 3: ``sqlstate``, psycopg2: ``pgcode``; SQLite has none)."""
    return getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)


def is_row_error(exc: BaseException) -> bool:
    """True when the database (or the driver, binding the values) refused the row itself."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    if isinstance(exc, DBAPIError):
        state = sqlstate(exc)
        return bool(state) and state[:2] in ROW_SQLSTATE_CLASSES
    if isinstance(exc, StatementError):  # raised while binding parameters, before the database saw anything
        return isinstance(exc.orig, _BIND_ERRORS)
    return isinstance(exc, _BIND_ERRORS) and not isinstance(exc, SQLAlchemyError)


def describe(exc: BaseException) -> str:
    """One line for logs and quarantine reasons: the driver's message, not SQLAlchemy's wrapper text."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:300] if text else repr(cause)}"

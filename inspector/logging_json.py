"""Structured logs: one JSON object per line on stdout, so journald/Loki/grep can all read them.

Extra context goes through ``logger.info("msg", extra={"fields": {...}})``; it is merged into the object.
"""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            obj.update(fields)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def configure_logging(level: str = "INFO", stream=None) -> logging.Handler:
    """Route the ``inspector`` logger tree to JSON lines; returns the handler (tests/demo may remove it)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("inspector")
    for old in [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


def log_fields(**fields: object) -> dict[str, dict[str, object]]:
    """``logger.info("frame done", **log_fields(frame=..., ms=...))``."""
    return {"extra": {"fields": fields}}

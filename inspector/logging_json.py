"""Structured logs: one JSON object per line on stdout, so journald/Loki/grep can all read them.

Extra context goes through ``logger.info("msg", extra={"fields": {...}})``; it is merged into the object. What
native libraries write to stderr is wrapped into the same JSON lines by ``NativeStderrToJson`` (``inspector run``).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
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


class NativeStderrToJson:
    """Route file descriptor 2 through the JSON log, so every journald line of the daemon parses as JSON.

    C libraries write to fd 2 directly, not through Python: libjpeg ("Corrupt JPEG data: premature end of data
    segment"), libpng ("libpng error: ..."), OpenCV's own logger, ONNX Runtime. fd 2 becomes a pipe whose reader
    thread turns each line into a record of logger ``inspector.native`` (level warning) and hands it straight to
    the JSON handler (never back to stderr). Uncaught exceptions (main thread, other threads, "exception
    ignored") are logged as single JSON records with their traceback instead of being printed. ``stop`` restores
    fd 2 and drains the pipe.
    """

    def __init__(self, handler: logging.Handler, logger_name: str = "inspector.native") -> None:
        self.handler = handler
        self.logger_name = logger_name
        self._saved_fd: int | None = None
        self._read_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._hooks: tuple[object, object, object] | None = None

    def __enter__(self) -> "NativeStderrToJson":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self._read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, name="stderr-json", daemon=True)
        self._thread.start()
        self._hooks = (sys.excepthook, threading.excepthook, sys.unraisablehook)
        sys.excepthook = lambda kind, value, tb: self._log_exception("uncaught exception", (kind, value, tb))
        threading.excepthook = lambda args: self._log_exception(
            f"uncaught exception in thread {getattr(args.thread, 'name', '?')}",
            (args.exc_type, args.exc_value, args.exc_traceback))
        sys.unraisablehook = lambda u: self._log_exception(
            f"exception ignored in {u.object!r}", (u.exc_type, u.exc_value, u.exc_traceback))

    def stop(self) -> None:
        if self._saved_fd is None:
            return
        if self._hooks is not None:
            sys.excepthook, threading.excepthook, sys.unraisablehook = self._hooks  # type: ignore[assignment]
        sys.stderr.flush()
        os.dup2(self._saved_fd, 2)  # drops the pipe's last write end: the reader sees end of file
        os.close(self._saved_fd)
        self._saved_fd = None
        if self._thread is not None:
            self._thread.join(5)
        if self._read_fd is not None:
            os.close(self._read_fd)
            self._read_fd = None

    def _pump(self) -> None:
        pending = b""
        assert self._read_fd is not None
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._emit(line)
        if pending:
            self._emit(pending)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if not text.strip():
            return
        record = logging.LogRecord(self.logger_name, logging.WARNING, "<native>", 0, text, None, None)
        record.fields = {"source": "stderr"}
        try:
            self.handler.handle(record)
        except Exception:  # noqa: BLE001 - nowhere left to report it: stderr is this very pipe
            return

    def _log_exception(self, message: str, exc_info: tuple) -> None:
        record = logging.LogRecord("inspector", logging.CRITICAL, "<excepthook>", 0, message, None, exc_info)
        try:
            self.handler.handle(record)
        except Exception:  # noqa: BLE001
            return

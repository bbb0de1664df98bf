"""Logging set-up: one line per event, plain or JSON, written off the event loop.

Records are handed to a writer thread as they are; formatting them and writing to stderr
(a pipe or a journal that may block) happen there, so a log line never delays a broadcast.
The thread writes a burst of lines at once (LINGER), not a line per wake-up.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from typing import TextIO

import orjson

__all__ = ["LogWriter", "RedactCredentials", "configure_logging"]

_API_KEY = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)


class RedactCredentials(logging.Filter):
    """Blank `api_key=user:password` wherever a library logs a URL (uvicorn logs every
    accepted WebSocket with its query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message.lower():
            record.msg, record.args = _API_KEY.sub(r"\1<redacted>", message), None
        return True


def _not_a_websocket_access_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('%s - "WebSocket %s"')


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        channel_id = getattr(record, "channel_id", None)
        if channel_id is not None:
            entry["channel_id"] = channel_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


BACKLOG = 10_000  # records waiting for the writer thread before new ones are dropped
LINGER = 0.02  # seconds a burst of records gathers before it is written, in one write


class _HandOff(logging.handlers.QueueHandler):
    """Queues each record with its message merged but not formatted (QueueHandler would
    format it here, on the loop); a full queue drops the record rather than stall the
    proxy, and says so once it drains."""

    def __init__(self, backlog: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(backlog)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message itself is merged here (cheap, and the arguments may change once the
        # loop moves on); the formatting and the write happen on the writer thread.
        try:
            record.msg, record.args = record.getMessage(), None
        except Exception:
            self.handleError(record)
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.makeLogRecord(
                    {
                        "name": __name__,
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{self.dropped} log line(s) dropped: stderr did not keep up",
                    }
                )
                self.queue.put_nowait(note)
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(threading.Thread):
    """Formats and writes the queued records. Woken by a record, it lets the burst that
    record starts gather for LINGER seconds, then writes all of it with one write: a busy
    proxy's lines cost a few wake-ups a second instead of one (and a write) per line. A
    failing filter or formatter costs its record only."""

    def __init__(
        self, backlog: queue.Queue[logging.LogRecord | None], handler: logging.StreamHandler[TextIO]
    ) -> None:
        super().__init__(name="log-writer", daemon=True)
        self._backlog = backlog
        self._handler = handler

    def run(self) -> None:
        while True:
            batch = [self._backlog.get()]
            time.sleep(LINGER)
            with contextlib.suppress(queue.Empty):
                while len(batch) < BACKLOG:
                    batch.append(self._backlog.get_nowait())
            self._write([r for r in batch if r is not None])
            if None in batch:  # stop(): everything queued before it is written
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        handler = self._handler
        lines = []
        for record in records:
            try:
                if handler.filter(record):
                    lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)
        if lines:
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:
                handler.handleError(records[-1])


class LogWriter:
    """The writer thread; `stop()` writes what is still queued, ends it, and from then on
    the root logger writes directly (the process is exiting)."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        backlog: queue.Queue[logging.LogRecord | None] = queue.Queue(BACKLOG)
        self._backlog = backlog
        self.hand_off = _HandOff(backlog)
        self._handler = handler
        self._writer = _Writer(backlog, handler)
        self._writer.start()
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._backlog.put(None, timeout=5)  # waits for room in a full backlog
            self._writer.join()
            root = logging.getLogger()
            root.handlers[:] = [self._handler if h is self.hand_off else h for h in root.handlers]


def configure_logging(level: str, as_json: bool) -> LogWriter:
    """Route every log line through a writer thread to stderr; call `stop()` on the result
    at exit so the last lines are written."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    writer = LogWriter(handler)
    root = logging.getLogger()
    root.handlers[:] = [writer.hand_off]
    root.setLevel(level.upper())
    # uvicorn's access log would print every request (and api_key query strings): off, and
    # so are its WebSocket access lines, which it logs as errors (sessions log their own).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("uvicorn.error").addFilter(_not_a_websocket_access_line)
    # Libraries' own request logging would show URLs with api_key=user:password (httpx and
    # httpcore where the demo applications or tests use them in this process).
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return writer

"""Logging set-up: one line per event, plain or JSON, written off the event loop.

Records are handed to a writer thread as they are; formatting them and writing to stderr
(a pipe or a journal that may block) happen there, so a log line never delays a broadcast.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import sys

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


class _HandOff(logging.handlers.QueueHandler):
    """Queues each record with its message merged but not formatted (QueueHandler would
    format it here, on the loop); a full queue drops the record rather than stall the
    proxy, and says so once it drains."""

    def __init__(self, backlog: queue.Queue[logging.LogRecord]) -> None:
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


class _Listener(logging.handlers.QueueListener):
    """A writer thread that survives a failing filter or handler, and whose stop waits for
    room in a full backlog instead of failing."""

    def handle(self, record: logging.LogRecord) -> None:
        try:
            super().handle(record)
        except Exception:
            for handler in self.handlers:
                handler.handleError(record)

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel, timeout=5)  # type: ignore[attr-defined]


class LogWriter:
    """The writer thread; `stop()` writes what is still queued, ends it, and from then on
    the root logger writes directly (the process is exiting)."""

    def __init__(self, handler: logging.Handler) -> None:
        backlog: queue.Queue[logging.LogRecord] = queue.Queue(BACKLOG)
        self.hand_off = _HandOff(backlog)
        self._handler = handler
        self._listener = _Listener(backlog, handler)
        self._listener.start()
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._listener.stop()
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

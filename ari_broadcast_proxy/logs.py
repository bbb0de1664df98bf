"""Logging set-up: one line per event, plain or JSON."""

from __future__ import annotations

import logging
import re
import sys

import orjson

__all__ = ["RedactCredentials", "configure_logging"]

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


def configure_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print every request (and api_key query strings): off, and
    # so are its WebSocket access lines, which it logs as errors (sessions log their own).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("uvicorn.error").addFilter(_not_a_websocket_access_line)
    # httpx logs every request URL at INFO, query strings (api_key=user:password) included.
    for noisy in ("httpx", "httpcore", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

"""Credentials never reach the log, whichever library logs a URL."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import pytest

from ari_broadcast_proxy.logs import RedactCredentials, configure_logging


def record(msg: str, *args: object, name: str = "any") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


@contextlib.contextmanager
def logging_to(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The proxy's logging set up on `stream` as stderr; on exit the writer is stopped (what
    is still queued is written) and the root logger and uvicorn's filters are restored."""
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    writer = None
    try:
        writer = configure_logging("info", as_json=False)
        yield
    finally:
        if writer is not None:
            writer.stop()
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("uvicorn.error").filters.clear()


@pytest.mark.parametrize(
    ("msg", "args", "expected"),
    [
        ("GET %s", ("/ari/x?api_key=u:p&app=a",), "GET /ari/x?api_key=<redacted>&app=a"),
        ('"%s"', ("/ari/events?app=a&API_KEY=u:p",), '"/ari/events?app=a&API_KEY=<redacted>"'),
        ("no credentials %d", (3,), "no credentials 3"),
    ],
)
def test_api_key_values_are_redacted(msg: str, args: tuple[object, ...], expected: str) -> None:
    entry = record(msg, *args)
    assert RedactCredentials().filter(entry)
    assert entry.getMessage() == expected


def test_uvicorn_websocket_access_lines_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    with logging_to(stream, monkeypatch):
        uvicorn = logging.getLogger("uvicorn.error")
        uvicorn.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", "/ari/events?api_key=u:p")
        uvicorn.info("Started server process [%d]", 42)
        logging.getLogger("other").info("url %s", "/ari?api_key=u:p")
    out = stream.getvalue()
    assert "WebSocket" not in out
    assert "Started server process [42]" in out
    assert "url /ari?api_key=<redacted>" in out
    assert "u:p" not in out


def test_a_record_that_cannot_be_formatted_does_not_stop_the_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logging, "raiseExceptions", False)  # handleError stays quiet
    with logging_to(stream, monkeypatch):
        logging.getLogger("other").info("two %s %s", "but one argument")  # noqa: PLE1206
        logging.getLogger("other").info("still %s", "written")
    assert "still written" in stream.getvalue()


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_a_burst_of_lines_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = CountingStream()
    with logging_to(stream, monkeypatch):
        for i in range(200):
            logging.getLogger("burst").info("line %d", i)
    assert stream.getvalue().count("burst: line ") == 200
    assert stream.writes <= 5  # a write per burst, not per line (200)

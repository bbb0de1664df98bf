"""A small ARI application that races for broadcast calls.

It connects its events WebSocket to ``<base>/ari/events?app=<name>`` (through
ari-broadcast-proxy, or straight to an Asterisk with native StasisBroadcast), and:

* on every ``CallBroadcast`` for its application waits a random 0..``--claim-delay-ms``
  milliseconds (so several copies really race) and claims the call with
  ``POST /ari/events/claim?channelId=..&application=..``: 204 = won, 409 = another application
  won, 404 = the broadcast already ended (timeout or hangup);
* on ``StasisStart`` (it won) answers the channel, holds it for ``--hold-seconds`` and sends it
  back to the dialplan with ``POST /ari/channels/{id}/continue``, so the dialplan resumes with
  ``STASISSTATUS=SUCCESS``;
* logs one line per event, and reconnects with exponential backoff when the socket drops.

Run two copies with different ``--app`` names and place calls into the dialplan's
``broadcast-via-proxy`` context to watch them race::

    python -m examples.racing_app --app demo-alpha --claim-delay-ms 50
    python -m examples.racing_app --app demo-beta --claim-delay-ms 50

Every flag has an environment variable equivalent (``RACING_APP_BASE_URL``, ``RACING_APP_NAME``,
``RACING_APP_USERNAME``, ``RACING_APP_PASSWORD``, ``RACING_APP_HOLD_SECONDS``,
``RACING_APP_CLAIM_DELAY_MS``); a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

log = logging.getLogger("racing_app")

DEFAULT_BASE_URL = "http://127.0.0.1:8089"
DEFAULT_APP = "racing-app"
DEFAULT_USERNAME = "asterisk"
DEFAULT_PASSWORD = "asterisk"
DEFAULT_HOLD_SECONDS = 3.0
DEFAULT_CLAIM_DELAY_MS = 0

#: Reconnect backoff: first delay, cap, and how long a connection must have lived for the
#: backoff to start again from the first delay.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 10.0

CLAIM_VERDICTS: Mapping[int, str] = {
    HTTPStatus.NO_CONTENT: "won",
    HTTPStatus.CONFLICT: "lost (claimed by another application)",
    HTTPStatus.NOT_FOUND: "too late (the broadcast already ended)",
}


@dataclass(frozen=True)
class Settings:
    """What the application needs to run, from flags and environment variables."""

    base_url: str
    app: str
    username: str
    password: str = field(repr=False)
    hold_seconds: float
    claim_delay_ms: int

    @property
    def events_url(self) -> str:
        """The events WebSocket URL, credentials included (never log it)."""
        parts = urlsplit(self.base_url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = urlencode({"app": self.app, "api_key": f"{self.username}:{self.password}"})
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/ari/events", query, ""))


def normalize_base_url(value: str) -> str:
    """Return ``value`` as ``scheme://host[:port][/prefix]``, without ``/ari`` or ``/``.

    Raises ``argparse.ArgumentTypeError`` when it is not an http(s) URL.
    """
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/ari")
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def non_negative_float(value: str) -> float:
    """argparse type: a float >= 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
    return number


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value!r}")
    return number


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command-line parser; defaults come from ``env`` (the RACING_APP_* variables)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.racing_app",
        description="An ARI application that races to claim broadcast calls.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--base-url",
        type=normalize_base_url,
        default=env.get("RACING_APP_BASE_URL", DEFAULT_BASE_URL),
        help="ARI server (the proxy) without /ari [RACING_APP_BASE_URL]",
    )
    parser.add_argument(
        "--app",
        default=env.get("RACING_APP_NAME", DEFAULT_APP),
        help="Stasis application name to register [RACING_APP_NAME]",
    )
    parser.add_argument(
        "--username",
        default=env.get("RACING_APP_USERNAME", DEFAULT_USERNAME),
        help="ARI user [RACING_APP_USERNAME]",
    )
    parser.add_argument(
        "--password",
        default=env.get("RACING_APP_PASSWORD", DEFAULT_PASSWORD),
        help="ARI password [RACING_APP_PASSWORD]",
    )
    parser.add_argument(
        "--hold-seconds",
        type=non_negative_float,
        default=env.get("RACING_APP_HOLD_SECONDS", str(DEFAULT_HOLD_SECONDS)),
        help="how long to keep a won call before continuing it [RACING_APP_HOLD_SECONDS]",
    )
    parser.add_argument(
        "--claim-delay-ms",
        type=non_negative_int,
        default=env.get("RACING_APP_CLAIM_DELAY_MS", str(DEFAULT_CLAIM_DELAY_MS)),
        help="upper bound of the random delay before each claim [RACING_APP_CLAIM_DELAY_MS]",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Parse ``argv`` (default: ``sys.argv[1:]``) over ``env`` (default: ``os.environ``)."""
    parser = build_parser(os.environ if env is None else env)
    ns = parser.parse_args(argv)
    if not ns.app:
        parser.error("--app must not be empty")
    return Settings(
        base_url=ns.base_url,
        app=ns.app,
        username=ns.username,
        password=ns.password,
        hold_seconds=ns.hold_seconds,
        claim_delay_ms=ns.claim_delay_ms,
    )


def describe(event: Mapping[str, Any]) -> str:
    """One log line for an ARI event: its type and the fields worth seeing."""
    channel = event.get("channel") or {}
    parts = [str(event.get("type", "?"))]
    if channel:
        parts.append(f"channel={channel.get('id')} ({channel.get('name')}, {channel.get('state')})")
    for key in ("caller", "called", "winner_app", "args"):
        if key in event:
            parts.append(f"{key}={json.dumps(event[key])}")
    return " ".join(parts)


class RacingApp:
    """The application: one events WebSocket, one HTTP client, one task per call."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self._tasks: set[asyncio.Task[None]] = set()
        # Channels this application holds, each with an event set when it leaves (StasisEnd).
        self._left: dict[str, asyncio.Event] = {}

    async def run(self) -> None:
        """Keep the events WebSocket connected, with backoff, until cancelled."""
        loop = asyncio.get_running_loop()
        delay = BACKOFF_INITIAL_S
        try:
            while True:
                started = loop.time()
                try:
                    async with connect(self.settings.events_url, open_timeout=10) as ws:
                        log.info("connected to %s/ari/events", self.settings.base_url)
                        await self._check_registration()
                        await self._receive(ws)
                    log.warning("events socket closed by the server")
                except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                    log.warning("events socket: %s: %s", type(exc).__name__, exc)
                if loop.time() - started >= BACKOFF_RESET_AFTER_S:
                    delay = BACKOFF_INITIAL_S
                wait = random.uniform(delay / 2, delay)
                log.info("reconnecting in %.1f s", wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, BACKOFF_MAX_S)
        finally:
            await self._cancel_tasks()

    async def _check_registration(self) -> None:
        """Log whether the server knows the application.

        This also opens the HTTP client's connection, so the first claim does not pay for it.
        """
        path = f"/ari/applications/{quote(self.settings.app, safe='')}"
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            log.warning("GET %s failed: %s: %s", path, type(exc).__name__, exc)
            return
        if response.status_code == HTTPStatus.OK:
            log.info("registered as application %s", self.settings.app)
        else:
            log.warning("GET %s: %d %s", path, response.status_code, response.text.strip())

    async def _receive(self, ws: ClientConnection) -> None:
        async for message in ws:
            try:
                event = json.loads(message)
            except ValueError:
                log.warning("ignoring a frame that is not JSON: %.200r", message)
                continue
            if isinstance(event, dict):
                self.handle(event)

    def handle(self, event: Mapping[str, Any]) -> None:
        """Log an event and start whatever it calls for, without blocking the socket."""
        log.info("event %s", describe(event))
        if event.get("application") not in (None, self.settings.app):
            return
        channel_id = (event.get("channel") or {}).get("id")
        if not channel_id:
            return
        kind = event.get("type")
        if kind == "CallBroadcast":
            self._spawn(self.claim(channel_id))
        elif kind == "StasisStart":
            # Registered before the task runs: StasisEnd may be the very next frame.
            left = self._left[channel_id] = asyncio.Event()
            self._spawn(self.answer_hold_continue(channel_id, left))
        elif kind == "StasisEnd" and (left := self._left.get(channel_id)) is not None:
            left.set()

    async def claim(self, channel_id: str) -> None:
        """Claim a broadcast call after a random jitter, and log the verdict."""
        jitter_ms = random.uniform(0, self.settings.claim_delay_ms)
        if jitter_ms:
            await asyncio.sleep(jitter_ms / 1000)
        params = {"channelId": channel_id, "application": self.settings.app}
        response = await self._post("/ari/events/claim", params)
        if response is None:
            return
        verdict = CLAIM_VERDICTS.get(response.status_code)
        if verdict is None:
            verdict = f"unexpected {response.status_code} {response.text.strip()}"
        log.info("claim channel=%s after %.0f ms: %s", channel_id, jitter_ms, verdict)

    async def answer_hold_continue(self, channel_id: str, left: asyncio.Event) -> None:
        """Answer a won call, hold it, then hand it back to the dialplan.

        ``left`` is set when the channel leaves the application (StasisEnd); a channel that
        left while held (a hangup) is not continued.
        """
        try:
            await self._channel_action(channel_id, "answer")
            log.info("holding channel=%s for %.1f s", channel_id, self.settings.hold_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(left.wait(), self.settings.hold_seconds)
            if left.is_set():
                log.info("channel=%s left while held; nothing to continue", channel_id)
                return
            await self._channel_action(channel_id, "continue")
        finally:
            if self._left.get(channel_id) is left:
                del self._left[channel_id]

    async def _channel_action(self, channel_id: str, action: str) -> None:
        """``POST /ari/channels/{id}/{action}`` and log the outcome."""
        response = await self._post(f"/ari/channels/{quote(channel_id, safe='')}/{action}")
        if response is None:
            return
        if response.is_success:
            log.info("%s channel=%s: %d", action, channel_id, response.status_code)
        else:
            log.warning(
                "%s channel=%s: %d %s",
                action,
                channel_id,
                response.status_code,
                response.text.strip(),
            )

    async def _post(
        self, path: str, params: Mapping[str, str] | None = None
    ) -> httpx.Response | None:
        try:
            return await self.client.post(path, params=params)
        except httpx.HTTPError as exc:
            log.warning("POST %s failed: %s: %s", path, type(exc).__name__, exc)
            return None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("task failed: %r", exc, exc_info=exc)

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def run(settings: Settings) -> None:
    """Run the application until cancelled (SIGINT/SIGTERM)."""
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(signum, main_task.cancel)
    log.info(
        "application %s: base %s, hold %.1f s, claim jitter 0..%d ms",
        settings.app,
        settings.base_url,
        settings.hold_seconds,
        settings.claim_delay_ms,
    )
    async with httpx.AsyncClient(
        base_url=settings.base_url,
        auth=(settings.username, settings.password),
        timeout=10.0,
    ) as client:
        await RacingApp(settings, client).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    settings = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [{settings.app}] %(message)s",
        stream=sys.stdout,
    )
    # httpx logs every request at INFO; this application logs its own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(run(settings))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

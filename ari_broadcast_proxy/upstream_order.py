"""Per application name, the proxy's upstream events sockets open and close in the order the
proxy decided them, one at a time, as a native client's do (see `UpstreamOrder`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["STEP_TIMEOUT", "UpstreamOrder", "UpstreamStep"]

log = logging.getLogger(__name__)

# A step waits this long at most for the steps before it on the same application names (each
# is bounded anyway: a handshake by --upstream-timeout, a close by FLUSH_TIMEOUT+CLOSE_TIMEOUT).
STEP_TIMEOUT = 15.0


class UpstreamOrder:
    """Per application name, the proxy's upstream events sockets open and close one step at a
    time, in the order the proxy decided them, as a native client's do.

    Asterisk registers a socket's applications in its handshake and, once the socket is
    closed, unregisters them by name (res/ari/ari_websockets.c: session_cleanup ->
    session_unregister_apps -> stasis_app_unregister). A registration that overlaps another
    socket's unregistration of the same name is lost: app_update (res/stasis/app.c) sends
    ApplicationReplaced to the old session, whose cleanup deactivates the application
    meanwhile, and then keeps it deactivated ("don't replace"); the new socket stays open
    with no application. A native client's close returns once Asterisk closed the
    connection, so its next socket registers after; through the proxy the close returns at
    once (uvicorn answers it) and the next socket could reach Asterisk while the old upstream
    socket is still closing."""

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future[None]] = {}  # each name's latest step

    def take(self, names: Iterable[str]) -> UpstreamStep:
        """A place for a step on `names`, taken now: after every step already taken."""
        names = list(dict.fromkeys(names))
        step = UpstreamStep([self._last[n] for n in names if n in self._last])
        for name in names:
            self._last[name] = step.done
        step.done.add_done_callback(lambda done: self._forget(names, done))
        return step

    def _forget(self, names: list[str], done: asyncio.Future[None]) -> None:
        for name in names:
            if self._last.get(name) is done:
                del self._last[name]


class UpstreamStep:
    """`async with step:` waits for the steps before it, and ends this one on the way out."""

    def __init__(self, before: list[asyncio.Future[None]]) -> None:
        self._before = before
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def __aenter__(self) -> None:
        try:
            pending = [f for f in self._before if not f.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=STEP_TIMEOUT)
                if late:
                    log.warning("upstream step for an application went ahead of an earlier one")
        except BaseException:
            self.end()
            raise

    async def __aexit__(self, *_: object) -> None:
        self.end()

    def end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

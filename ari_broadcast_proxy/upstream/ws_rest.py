"""ARI requests over an events WebSocket (REST over WebSocket, Asterisk 20.14/21.9/22.4+).

Asterisk handles the requests of one socket in order, so several can be written back to
back and answered in one round trip; over HTTP each costs Asterisk's ~2 ms request handling.
The broadcast application's own socket carries the proxy's hand-over calls this way when
Asterisk answers a probe; otherwise the proxy uses HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from urllib.parse import urlencode

import orjson

from ..errors import UpstreamError, UpstreamTimeout

__all__ = ["RestOverWebSocket"]


class RestOverWebSocket:
    def __init__(self, socket: Any, timeout: float) -> None:
        self._socket = socket
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def probe(self, timeout: float = 2.0) -> bool:
        """Whether this Asterisk answers RESTRequest frames at all."""
        try:
            [future] = self.submit([("GET", "asterisk/ping", {})])
            return await asyncio.wait_for(future, timeout) == 200
        except (UpstreamError, TimeoutError):
            return False

    def submit(self, calls: list[tuple[str, str, dict[str, Any]]]) -> list[asyncio.Future[int]]:
        """Write each (method, path, params) as a RESTRequest, in order, now, without
        waiting for answers; each future resolves to the status code."""
        if self._closed:
            raise UpstreamError("the broadcast application's socket is closed")
        loop = asyncio.get_running_loop()
        futures = []
        for method, path, params in calls:
            transaction = f"proxy-{next(self._ids)}"
            future: asyncio.Future[int] = loop.create_future()
            self._pending[transaction] = future
            uri = path + ("?" + urlencode(params) if params else "")
            frame = {
                "type": "RESTRequest",
                "transaction_id": transaction,
                "request_id": transaction,
                "method": method,
                "uri": uri,
            }
            futures.append(future)
            try:
                self._socket.send(orjson.dumps(frame).decode())
            except Exception as exc:
                self._forget(futures)  # the batch as a whole failed; nobody waits for it
                raise UpstreamError(f"writing to the broadcast socket failed: {exc!r}") from exc
        return futures

    def _forget(self, futures: list[asyncio.Future[int]]) -> None:
        gone = set(futures)
        for transaction, future in list(self._pending.items()):
            if future in gone:
                del self._pending[transaction]
        for future in futures:
            future.cancel()

    async def statuses(self, futures: list[asyncio.Future[int]]) -> list[int]:
        """Wait for the statuses of submitted calls (bounded by the upstream timeout)."""
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), self._timeout))
        except TimeoutError:
            self._forget(futures)
            raise UpstreamTimeout(
                "Asterisk did not answer over the broadcast socket in time"
            ) from None

    def on_response(self, message: dict[str, Any]) -> bool:
        """Feed a RESTResponse from the socket; True if it answered one of ours."""
        future = self._pending.pop(str(message.get("transaction_id", "")), None)
        if future is None:
            return False
        if not future.done():
            future.set_result(int(message.get("status_code", 0)))
        return True

    def close(self) -> None:
        """The socket is gone: fail whatever still waits."""
        self._closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(UpstreamError("the broadcast application's socket closed"))
        self._pending.clear()

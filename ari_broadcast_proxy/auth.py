"""ARI credentials: what a client presented, and whether Asterisk lets it write.

The proxy never keeps a user database: Asterisk's ari.conf stays the only truth. A claim is
answered by the proxy, so before answering it asks Asterisk once whether the credentials may
write, with a request that has no effect (a claim for a channel id that cannot exist), and
remembers a yes for a short while.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from .upstream.rest import AriRest, HttpResponse

__all__ = ["AccessDenied", "Credentials", "WriteAccess"]

_PROBE_CHANNEL = "ari-broadcast-proxy-credential-probe"


@dataclass(frozen=True)
class Credentials:
    """The Authorization header or `api_key` query parameter, exactly as presented."""

    authorization: str | None
    api_key: str | None

    def cache_key(self) -> str:
        raw = f"{self.authorization}\x00{self.api_key}".encode("utf-8", "surrogateescape")
        return hashlib.sha256(raw).hexdigest()


class AccessDenied(Exception):
    """Asterisk's own refusal (401/403), to be relayed to the client unchanged."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(f"upstream refused the credentials with {response.status_code}")
        self.response = response


class WriteAccess:
    """Caches 'may write' verdicts per credential for `ttl` seconds."""

    def __init__(
        self, rest: AriRest, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rest = rest
        self._ttl = ttl
        self._clock = clock
        self._granted: dict[str, float] = {}

    def granted(self, credentials: Credentials) -> bool:
        """Whether Asterisk said yes to these credentials less than `ttl` seconds ago."""
        expiry = self._granted.get(credentials.cache_key())
        return expiry is not None and expiry > self._clock()

    async def require(self, credentials: Credentials) -> None:
        """Return if Asterisk accepts these credentials for writing, else raise AccessDenied."""
        if self.granted(credentials):
            return
        key = credentials.cache_key()
        now = self._clock()
        params = {"channelId": _PROBE_CHANNEL, "application": _PROBE_CHANNEL}
        if credentials.api_key:
            params["api_key"] = credentials.api_key
        response = await self._rest.call(
            "POST",
            "events/claim",
            params,
            as_proxy=False,  # the client's own credentials, never the proxy's
            authorization=credentials.authorization,
        )
        if response.status_code in (401, 403):
            raise AccessDenied(response)
        if len(self._granted) > 10_000:
            self._granted = {k: v for k, v in self._granted.items() if v > now}
        self._granted[key] = now + self._ttl

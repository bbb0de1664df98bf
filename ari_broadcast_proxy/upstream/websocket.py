"""Opening ARI events WebSockets on Asterisk, with handshake refusals kept intact."""

from __future__ import annotations

from collections.abc import Mapping

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from ..errors import UpstreamError, UpstreamTimeout

__all__ = ["HandshakeRefused", "open_events_socket"]

# Frames from Asterisk can carry large snapshots (bridges with many channels); the
# downstream side applies its own limits.
MAX_FRAME = 16 * 1024 * 1024


class HandshakeRefused(Exception):
    """Asterisk answered the upgrade with an HTTP error: relayed to the client as is."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        super().__init__(f"upstream refused the WebSocket upgrade with {status}")
        self.status = status
        self.headers = headers
        self.body = body


async def open_events_socket(
    url: str, headers: Mapping[str, str], *, timeout: float, subprotocols: list[str] | None = None
) -> ClientConnection:
    """Connect to `ws://asterisk/ari/events?...`; raise HandshakeRefused or UpstreamError."""
    try:
        return await connect(
            url,
            additional_headers=dict(headers),
            open_timeout=timeout,
            close_timeout=2,
            max_size=MAX_FRAME,
            max_queue=64,
            compression=None,
            ping_interval=20,
            ping_timeout=20,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            user_agent_header=None,
            proxy=None,
        )
    except InvalidStatus as exc:
        response = exc.response
        # websockets hands the body over as a bytearray; Starlette only sends bytes as is.
        raise HandshakeRefused(
            response.status_code, list(response.headers.raw_items()), bytes(response.body or b"")
        ) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout("Asterisk did not complete the WebSocket handshake in time") from exc
    except (OSError, InvalidHandshake) as exc:
        raise UpstreamError(f"Asterisk is unreachable ({type(exc).__name__}: {exc})") from exc

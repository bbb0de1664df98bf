"""Event frames written straight onto a client's socket when nothing waits before them.

Through a session's queue every event costs a wake-up of its writer task, an ASGI message,
uvicorn's send and wsproto's framing, for a two- to ten-byte header in front of the event's
bytes. When the client's queue is empty and its socket open and writable, the session
writes the frame at once instead (a server's frames are not masked, and the proxy never
negotiates an extension). Anything else (frames queued, a client that stopped reading, a
closing socket) takes the queue, so order and back-pressure stay the queue's. Only uvicorn's
wsproto protocol is known here: under another server every frame takes the queue.
"""

from __future__ import annotations

from starlette.types import Send
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

__all__ = ["DirectFrames", "text_frame"]

_TEXT = 0x81  # FIN and opcode 1: one whole text message


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented text frame (RFC 6455, section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((_TEXT, size)) + payload
    if size < 1 << 16:
        return bytes((_TEXT, 126)) + size.to_bytes(2, "big") + payload
    return bytes((_TEXT, 127)) + size.to_bytes(8, "big") + payload


class DirectFrames:
    def __init__(self, protocol: WSProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, send: Send) -> DirectFrames | None:
        """For the ASGI `send` of a uvicorn wsproto connection, else None."""
        protocol = getattr(send, "__self__", None)
        return cls(protocol) if isinstance(protocol, WSProtocol) else None

    def send(self, text: str) -> bool:
        """Write `text` as one frame now; False when it must wait its turn (the queue)."""
        protocol = self._protocol
        if (
            not protocol.handshake_complete
            or protocol.close_sent
            or not protocol.writable.is_set()  # above the transport's high-water mark
            or protocol.transport.is_closing()
        ):
            return False
        protocol.transport.write(text_frame(text.encode()))
        return True

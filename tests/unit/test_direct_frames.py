"""A frame written directly is the frame wsproto (uvicorn's WebSocket protocol) would write."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol

from ari_broadcast_proxy.direct_frames import DirectFrames, text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 4096, 65535, 65536, 300_000])
def test_text_frames_are_wsprotos(size: int) -> None:
    text = ("é" * size)[: max(0, size // 2)] + "x" * (size - size // 2)
    server = FrameProtocol(client=False, extensions=[])
    assert text_frame(text.encode()) == server.send_data(text, fin=True)


def test_only_uvicorns_wsproto_connections_are_written_directly() -> None:
    async def send(_: object) -> None:
        pass

    assert DirectFrames.of(send) is None

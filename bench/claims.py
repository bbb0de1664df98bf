"""Section claims: what one losing claim costs, over HTTP and over REST over WebSocket.

Nine claims in ten lose a race, so a losing claim is the proxy's most frequent request. A
call is put on offer (native: StasisBroadcast; proxy: the proxy's broadcast) and won by one
application; a second application then sends `n` claims for it, all answered 409,
`concurrency` at a time: over keep-alive HTTP connections, then as RESTRequest frames on
its events socket. Per claim: the CPU of the proxy and of Asterisk, and the round trip.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import websockets

from .sections import CONTEXT, Context, ms
from .stack import ADMIN, cpu_seconds

AUTH = "api_key={}:{}".format(*ADMIN)


async def claims(ctx: Context, n: int, warmup: int, concurrency: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in ("native", "proxy"):
        await ctx.admin.set_native_modules(path == "native")
        out[path] = await _path(ctx, path, n, warmup, concurrency)
    return out


async def _path(ctx: Context, path: str, n: int, warmup: int, concurrency: int) -> dict[str, Any]:
    tag = ctx.tag(path)
    winner, loser = f"{tag}-app0", f"{tag}-app1"
    base = ctx.base(path)
    ws_base = "ws" + base[len("http") :]
    sockets = {
        app: await websockets.connect(f"{ws_base}/ari/events?app={app}&{AUTH}", max_size=None)
        for app in (winner, loser)
    }
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    http = httpx.AsyncClient(base_url=base + "/ari/", auth=ADMIN, timeout=10, limits=limits)
    try:
        await ctx.admin.wait_registered([winner, loser], via_proxy=path == "proxy")
        channel_id = await _won_call(ctx, path, tag, http, sockets[winner], winner)
        uri = f"events/claim?channelId={channel_id}&application={loser}"
        row: dict[str, Any] = {}
        for transport in ("http", "ws"):
            send = _over_http(http, uri) if transport == "http" else _over_ws(sockets[loser], uri)
            await _run(send, warmup, concurrency)
            before = _cpu(ctx)
            started = time.monotonic()
            rtts, statuses = await _run(send, n, concurrency)
            wall = time.monotonic() - started
            after = _cpu(ctx)
            row[transport] = {
                "claims": n,
                "statuses": statuses,
                "rtt_ms": ms(rtts),
                "claims_per_s": round(n / wall),
                "proxy_cpu_us": round((after[0] - before[0]) / n * 1e6, 1),
                "asterisk_cpu_us": round((after[1] - before[1]) / n * 1e6, 1),
            }
            r = row[transport]
            ctx.log(
                f"  claims: {path} over {transport}: {n} x {statuses}, rtt p50 "
                f"{r['rtt_ms']['p50']} ms, CPU per claim proxy {r['proxy_cpu_us']} us, "
                f"Asterisk {r['asterisk_cpu_us']} us"
            )
        await http.post(f"channels/{channel_id}/continue")
        return row
    finally:
        await http.aclose()
        for socket in sockets.values():
            await socket.close()
        await ctx.admin.wait_no_channels()


def _cpu(ctx: Context) -> tuple[float, float]:
    return cpu_seconds([ctx.proxy.pid]), cpu_seconds([ctx.asterisk.pid] if ctx.asterisk.pid else [])


async def _won_call(
    ctx: Context,
    path: str,
    tag: str,
    http: httpx.AsyncClient,
    socket: websockets.ClientConnection,
    winner: str,
) -> str:
    """Originate a call into the path's broadcast (60 s), claim it for `winner`."""
    response = await ctx.admin.http.post(
        f"{ctx.asterisk.base}/ari/channels",
        params={
            "endpoint": f"Local/s@{CONTEXT[path]}",
            "context": "bench-hold",
            "extension": "s",
            "priority": 1,
            "channelId": f"{tag}-claims",
            "otherChannelId": f"{tag}-claims-b",
        },
        json={"variables": {"__BENCH_DATA": f"60000,^{tag}-"}},
    )
    response.raise_for_status()
    channel_id = await _next(socket, "CallBroadcast")
    params = {"channelId": channel_id, "application": winner}
    claimed = await http.post("events/claim", params=params)
    if claimed.status_code != 204:
        raise RuntimeError(f"claims section: the winning claim got {claimed.status_code}")
    await _next(socket, "StasisStart")
    return channel_id


async def _next(socket: websockets.ClientConnection, kind: str) -> str:
    async with asyncio.timeout(10):
        while True:
            event = orjson.loads(await socket.recv())
            if event.get("type") == kind:
                return str(event["channel"]["id"])


def _over_http(http: httpx.AsyncClient, uri: str) -> Any:
    async def send(_: int) -> int:
        return (await http.post(uri)).status_code

    return send


def _over_ws(socket: websockets.ClientConnection, uri: str) -> Any:
    """Claims as RESTRequest frames; one reader matches each RESTResponse to its request."""
    waiting: dict[str, asyncio.Future[int]] = {}
    reader: list[asyncio.Task[None]] = []

    async def read() -> None:
        async for frame in socket:
            event = orjson.loads(frame)
            if event.get("type") == "RESTResponse":
                future = waiting.pop(event["request_id"], None)
                if future is not None:
                    future.set_result(int(event["status_code"]))

    async def send(i: int) -> int:
        if not reader:
            reader.append(asyncio.create_task(read()))
        future = asyncio.get_running_loop().create_future()
        waiting[str(i)] = future
        request = {"type": "RESTRequest", "request_id": str(i), "method": "POST", "uri": uri}
        await socket.send(orjson.dumps(request).decode())
        return await asyncio.wait_for(future, 10)

    return send


async def _run(send: Any, n: int, concurrency: int) -> tuple[list[float], dict[str, int]]:
    """`n` claims, `concurrency` in flight: round trips (s) and the statuses' counts."""
    rtts: list[float] = []
    statuses: dict[str, int] = {}
    counter = iter(range(n))

    async def client() -> None:
        for i in counter:
            sent = time.perf_counter()
            status = await send(i)
            rtts.append(time.perf_counter() - sent)
            statuses[str(status)] = statuses.get(str(status), 0) + 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return rtts, statuses

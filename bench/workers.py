"""Load-generator worker processes.

Every worker is a separate process running one asyncio (uvloop) event loop and owning small
keep-alive HTTP/1.1 pools (the proxy's own `upstream/http.py`, one per origin: about 35 us of
CPU per request, where httpx cost 600 us and made the generator itself the bottleneck of a
2-core machine). The orchestrator (bench/cli.py) drives it over a Pipe with small
commands (`op`, kwargs) and gets plain tuples back. One worker can

- host applications: one events WebSocket per application, a CallBroadcast handler that
  claims at once (for the applications told to race), and a StasisStart handler that lets the
  channel go (`continue`, the dialplan then hangs up);
- originate calls at a fixed rate (the originator worker, never one that hosts applications);
- send sequential or concurrent REST requests (pass-through cost);
- count the frames of one events socket (relay throughput).

Every timestamp that crosses a process boundary is `time.monotonic()` (CLOCK_MONOTONIC,
system-wide); durations inside one process use `time.perf_counter()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect

from ari_broadcast_proxy.errors import UpstreamError
from ari_broadcast_proxy.upstream.http import HttpPool

USER = PASSWORD = "asterisk"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
HTTP_TIMEOUT = 10.0  # every client request, both paths
# Requests in flight per worker process (each origin's pool keeps as many connections);
# further requests wait in `Worker.gate`, and that wait is measured.
POOL = 8
END_MARKER = '"eventname":"bench-end"'


def _err(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:160]


class Http:
    """One keep-alive pool per origin (`http://host:port`), the same for both paths."""

    def __init__(self) -> None:
        self._pools: dict[str, HttpPool] = {}

    async def request(
        self, method: str, url: str, body: bytes = b"", content_type: str | None = None
    ) -> int:
        """`url` is absolute; the answer's status (its body is read and dropped)."""
        origin, _, path = url.partition("://")[2].partition("/")
        pool = self._pools.get(origin)
        if pool is None:
            host, _, port = origin.rpartition(":")
            pool = self._pools[origin] = HttpPool(
                host,
                int(port),
                max_connections=POOL,
                timeout=HTTP_TIMEOUT,
                connect_timeout=HTTP_TIMEOUT,
                keepalive_expiry=5,
            )
        headers = [(b"authorization", BASIC.encode())]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        response = await pool.request(method.encode(), b"/" + path.encode(), headers, body)
        return response.status_code

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


class Worker:
    def __init__(self) -> None:
        self.http = Http()
        self.gate = asyncio.Semaphore(POOL)
        self._sockets: dict[str, ClientConnection] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._base = ""
        self._bases: dict[str, str] = {}  # per application, when not all use `_base`
        self._claimers: frozenset[str] = frozenset()
        self._reset()
        self._relay: dict[str, Any] = {}
        self._echo: asyncio.Server | None = None

    def _reset(self) -> None:
        self.broadcasts: list[tuple[str, str, float]] = []  # channel, app, received
        # channel, app, decided (CallBroadcast arrived), sent (got a connection), answered, ...
        self.claims: list[tuple[str, str, float, float, float, int, str]] = []
        self.starts: list[tuple[str, str, float]] = []
        self.release_errors: list[str] = []
        self.socket_closes: list[str] = []

    async def close(self) -> None:
        await self.op_apps_close()
        await self.http.aclose()
        if self._echo is not None:
            self._echo.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- applications -------------------------------------------------------------------------

    async def op_apps_open(
        self,
        base: str,
        names: list[str],
        claimers: list[str],
        bases: dict[str, str] | None = None,
    ) -> int:
        """Connect one events socket per application to `base` (Asterisk or the proxy), or
        to its own in `bases` (replicas: each application claims and lets go through the
        replica it is connected to)."""
        await self.op_apps_close()
        self._base = base
        self._bases = dict(bases or {})
        self._claimers = frozenset(claimers)

        async def one(name: str) -> None:
            ws_base = "ws" + self._bases.get(name, base)[len("http") :]
            self._sockets[name] = await connect(
                f"{ws_base}/ari/events?app={name}",
                additional_headers={"authorization": BASIC},
                max_size=None,
                compression=None,
                ping_interval=None,
            )

        await asyncio.gather(*(one(n) for n in names))
        self._readers = [
            asyncio.create_task(self._read(name, ws)) for name, ws in self._sockets.items()
        ]
        return len(self._sockets)

    async def op_apps_close(self) -> None:
        """Let in-flight claims and releases finish (bounded: past saturation thousands may
        wait for a connection), cancel the rest, then close every socket, so nothing of one
        run lands in the next one's records."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=3)
        for task in list(self._tasks):
            task.cancel()
        for ws in self._sockets.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._sockets.clear()
        self._readers = []

    async def _read(self, app: str, ws: ClientConnection) -> None:
        monotonic = time.monotonic
        claims = app in self._claimers
        base = self._bases.get(app, self._base)
        try:
            async for frame in ws:
                now = monotonic()
                event = orjson.loads(frame)
                kind = event.get("type")
                if kind == "CallBroadcast":
                    channel_id = event["channel"]["id"]
                    self.broadcasts.append((channel_id, app, now))
                    if claims:
                        self._spawn(self._claim(base, channel_id, app, now))
                elif kind == "StasisStart":
                    channel_id = event["channel"]["id"]
                    self.starts.append((channel_id, app, now))
                    self._spawn(self._release(base, channel_id))
        except Exception as exc:
            self.socket_closes.append(f"{app}: {_err(exc)}")
        else:
            if ws.close_code not in (None, 1000):
                self.socket_closes.append(f"{app}: closed {ws.close_code} {ws.close_reason}")

    async def _claim(self, base: str, channel_id: str, app: str, offered: float) -> None:
        """Claim at once. `sent` is when the application decided to claim (the CallBroadcast's
        arrival), so any wait for a free connection counts, on both paths alike."""
        url = f"{base}/ari/events/claim?channelId={channel_id}&application={app}"
        acquired = offered
        try:
            async with self.gate:
                acquired = time.monotonic()
                status = await self.http.request("POST", url)
            error = ""
        except Exception as exc:
            status, error = 0, _err(exc)
        self.claims.append((channel_id, app, offered, acquired, time.monotonic(), status, error))

    async def _release(self, base: str, channel_id: str) -> None:
        try:
            url = f"{base}/ari/channels/{channel_id}/continue"
            async with self.gate:
                status = await self.http.request("POST", url)
            if status >= 300:
                self.release_errors.append(f"continue -> {status}")
        except Exception as exc:
            self.release_errors.append(f"continue: {_err(exc)}")

    async def op_apps_progress(self) -> tuple[int, int, int]:
        """(CallBroadcasts, claims answered, StasisStarts) recorded since the last collect."""
        return len(self.broadcasts), len(self.claims), len(self.starts)

    async def op_apps_collect(self) -> dict[str, Any]:
        out = {
            "broadcasts": self.broadcasts,
            "claims": self.claims,
            "starts": self.starts,
            "release_errors": self.release_errors,
            "socket_closes": self.socket_closes,
        }
        self._reset()
        return out

    # -- origination --------------------------------------------------------------------------

    async def op_originate(
        self,
        asterisk: str,
        context: str,
        data: str,
        rate: float,
        count: int,
        tag: str,
        variables: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Originate `count` Local/s@context calls at `rate`/s straight to Asterisk, with
        BENCH_DATA = `data` (and `variables`) inherited by both legs.

        The ;2 leg (the one that runs the broadcast) gets channel id `<tag>-<n>-b`, so every
        CallBroadcast names the call it belongs to. Returns per call (id, sent, answered,
        status, error) and how late the schedule ran."""
        body = orjson.dumps({"variables": {"__BENCH_DATA": data, **(variables or {})}})
        results: list[tuple[str, float, float, int, str]] = []
        lag = 0.0

        async def one(n: int) -> None:
            # Asterisk refuses an id that is a prefix of an existing channel's id (409):
            # both legs get a terminating suffix.
            channel_id = f"{tag}-{n}-b"
            query = urlencode(
                {
                    "endpoint": f"Local/s@{context}",
                    "context": "bench-hold",
                    "extension": "s",
                    "priority": "1",
                    "timeout": "30",
                    "channelId": f"{tag}-{n}-a",
                    "otherChannelId": channel_id,
                }
            )
            sent = time.monotonic()  # the schedule's time: waiting for a connection counts
            try:
                async with self.gate:
                    status = await self.http.request(
                        "POST", f"{asterisk}/ari/channels?{query}", body, "application/json"
                    )
                error = ""
            except Exception as exc:
                status, error = 0, _err(exc)
            results.append((channel_id, sent, time.monotonic(), status, error))

        start = time.monotonic() + 0.02
        tasks = []
        for n in range(count):
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
        return {"calls": results, "lag": lag}

    # -- REST pass-through --------------------------------------------------------------------

    async def op_http_sequential(self, urls: list[str], n: int, warmup: int) -> list[list[float]]:
        """`n` rounds of one request per URL, alternating the order every round (so drift
        and caching hit every URL alike); per URL, the latencies in seconds."""
        clock = time.perf_counter
        request = self.http.request
        for _ in range(warmup):
            for url in urls:
                if (status := await request("GET", url)) != 200:
                    raise RuntimeError(f"GET {url} -> {status}")
        out: list[list[float]] = [[] for _ in urls]
        order = list(range(len(urls)))
        for i in range(n):
            for k in order if i % 2 == 0 else reversed(order):
                t0 = clock()
                status = await request("GET", urls[k])
                out[k].append(clock() - t0)
                if status != 200:
                    raise RuntimeError(f"GET {urls[k]} -> {status}")
        return out

    async def op_http_concurrent(
        self, url: str, concurrency: int, duration: float, start_at: float
    ) -> tuple[int, int]:
        """`concurrency` request loops on `url` from `start_at` (monotonic) for `duration`."""
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        deadline = time.monotonic() + duration
        done = errors = 0

        async def loop() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                try:
                    if await self.http.request("GET", url) == 200:
                        done += 1
                    else:
                        errors += 1
                except UpstreamError:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return done, errors

    # -- the machine's floor: one hop between two processes -------------------------------

    async def op_echo_open(self) -> int:
        """An echo server on a free loopback port (the far end of `echo_rtt`)."""
        if self._echo is None:
            self._echo = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", 0)
        return self._echo.sockets[0].getsockname()[1]

    async def op_echo_rtt(self, port: int, rounds: int, gap: float, size: int) -> list[float]:
        """`rounds` round trips of a `size`-byte message to the echo server at `port`,
        `gap` seconds apart (both processes idle in between, as between calls): what one
        hop between two processes costs on this machine, with no ARI work at all."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        message = b"x" * size
        out = []
        try:
            for _ in range(rounds):
                await asyncio.sleep(gap)
                t0 = time.perf_counter()
                writer.write(message)
                await reader.readexactly(size)
                out.append(time.perf_counter() - t0)
        finally:
            writer.close()
        return out

    # -- events relay -------------------------------------------------------------------------

    async def op_relay_open(self, base: str, app: str) -> None:
        """One subscribeAll events socket; frames are counted, not parsed."""
        ws_base = "ws" + base[len("http") :]
        ws = await connect(
            f"{ws_base}/ari/events?app={app}&subscribeAll=true",
            additional_headers={"authorization": BASIC},
            max_size=None,
            compression=None,
            ping_interval=None,
        )
        state: dict[str, Any] = {"ws": ws, "count": 0, "first": None, "last": None, "ends": 0}
        state["done"] = asyncio.Event()
        state["reader"] = asyncio.create_task(self._count(state))
        self._relay = state

    async def _count(self, state: dict[str, Any]) -> None:
        monotonic = time.monotonic
        count = ends = 0
        first = None
        try:
            async for frame in state["ws"]:
                count += 1
                if first is None:
                    first = monotonic()
                    state["first"] = first
                if END_MARKER in frame:
                    ends += 1
                    state["ends"] = ends
                    state["last"] = monotonic()
                    state["count"] = count
                    if ends >= state.get("expect", 1 << 30):
                        state["done"].set()
        except Exception as exc:
            state["error"] = _err(exc)
        state["count"] = count
        state["done"].set()

    async def op_relay_wait(self, ends: int, timeout: float) -> dict[str, Any]:
        state = self._relay
        state["expect"] = ends
        if state["ends"] >= ends:
            state["done"].set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state["done"].wait(), timeout)
        ws = state["ws"]
        state["reader"].cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
        first, last = state["first"], state["last"]
        return {
            "events": state["count"],
            "seconds": (last - first) if first and last else None,
            "ends": state["ends"],
            "error": state.get("error") or ("" if state["ends"] >= ends else "timed out"),
            "close_code": ws.close_code,
        }


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def _serve(conn: Any) -> None:
    worker = Worker()
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def receive() -> None:
        """Blocking reads in a thread: the pipe stays in blocking mode, so large replies
        (a step's records) are written whole."""
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                message = None  # the orchestrator is gone: exit
            try:
                loop.call_soon_threadsafe(inbox.put_nowait, message)
            except RuntimeError:  # the loop is closed: the worker is exiting
                return
            if message is None or message[0] == "exit":
                return

    threading.Thread(target=receive, name="commands", daemon=True).start()
    try:
        while (message := await inbox.get()) is not None:
            op, kwargs = message
            if op == "exit":
                break
            try:
                result = await getattr(worker, "op_" + op)(**kwargs)
                conn.send(("ok", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.close(), 5)


def worker_main(conn: Any) -> None:
    # Ctrl-C reaches the whole process group: the orchestrator alone decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        uvloop.run(_serve(conn))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(_serve(conn))


class WorkerError(RuntimeError):
    pass


class WorkerHandle:
    """The orchestrator's side of one worker process."""

    def __init__(self, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def call(self, op: str, **kwargs: Any) -> Any:
        async with self._lock:
            self.conn.send((op, kwargs))
            loop = asyncio.get_running_loop()
            status, result = await loop.run_in_executor(None, self._recv)
        if status == "error":
            raise WorkerError(f"worker {self.name} failed in {op}:\n{result}")
        return result

    def _recv(self) -> Any:
        while not self.conn.poll(0.5):
            if not self.process.is_alive():
                return ("error", f"exited with {self.process.exitcode}")
        return self.conn.recv()

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.conn.send(("exit", {}))
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            os.kill(self.pid, signal.SIGKILL)
            self.process.join()
        self.conn.close()

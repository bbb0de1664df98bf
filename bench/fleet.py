"""Section `fleet`: the proxy in front of three Asterisk servers (`--upstream` x 3), against
the same requests straight to Asterisk and through the benchmark's one-server proxy, in the
same run.

The section starts two more sandbox instances (the bench overlay, systemnames `fleet2` and
`fleet3`) and a second proxy (the benchmark's CLI, `--upstream` for all three servers, the
benchmark's instance first, broadcast application `broadcast-fleet`), and stops them on every
way out (errors and Ctrl-C included).

1. Routing cost per REST call: one channel held on every server (`POST /channels/create` into
   an application whose socket the section holds straight to that server), then sequential
   GETs, one per target per round, interleaved with the order alternating every round
   (the workers' `http_sequential`): `GET /channels/{id}` (a channel of the first server:
   routed to its holder, which the warm-up made known), `GET /asterisk/info` (the first
   ready server), `GET /channels` (three servers' lists merged), and `GET /channels/{id}` of
   the third server's channel (direct to that server against the three-server proxy only).
   Proxy CPU per 1000 requests: each proxy's own CPU over the interleaved run / its requests.
2. Events relay: one subscribeAll socket through the three-server proxy while every server
   runs the [bench-events] flood (`loops` loops of `iterations` UserEvent()), against one
   socket straight to the first server while it alone floods; events received / seconds
   from the first frame to the last flood's end event received. The section waits for every
   server's flood to end on Asterisk (its channels gone, at most `relay_cap` s), then as long
   again (at least 10 s) for the end events; a run whose end events did not all arrive is
   marked incomplete, the times Asterisk closed the proxy's events socket (the proxy's log)
   are counted per server, and each server is then probed with a short flood on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from .sections import Context, CpuMeter, mean_rates, ms, pct, poll_until, ratio
from .stack import Admin, AsteriskInstance, ProxyInstance, cpu_seconds
from .workers import BASIC, END_MARKER, WorkerError

FLEET_APP = "broadcast-fleet"  # the three-server proxy's broadcast application
HOLD_APP = "fleet-hold"  # holds the measured channels in Stasis, one socket per server
EXTRA = 2  # servers started besides the benchmark's own


class Held:
    """One channel held on one server: `POST /channels/create` into HOLD_APP, whose events
    socket (straight to that server) stays open until `close`."""

    def __init__(self, admin: Admin, channel_id: str) -> None:
        self.admin = admin
        self.id = channel_id
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        ws_base = "ws" + self.admin.asterisk[len("http") :]
        self.ws = await connect(
            f"{ws_base}/ari/events?app={HOLD_APP}",
            additional_headers={"authorization": BASIC},
            ping_interval=None,
        )
        self.reader = asyncio.create_task(self._drain(self.ws))
        response = await self.admin.http.post(
            f"{self.admin.asterisk}/ari/channels/create",
            params={
                "endpoint": "Local/s@bench-hold",
                "app": HOLD_APP,
                "channelId": self.id,
                "otherChannelId": self.id + "-2",
            },
        )
        response.raise_for_status()

    @staticmethod
    async def _drain(ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            async for _frame in ws:
                pass

    async def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.admin.http.delete(f"{self.admin.asterisk}/ari/channels/{self.id}")
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)


async def _wait_fleet_ready(ctx: Context, proxy: ProxyInstance, servers: int, cap: float) -> float:
    """Until the three-server proxy holds its broadcast application on every server."""

    async def check() -> bool:
        if proxy.process.poll() is not None:
            raise RuntimeError(
                f"fleet proxy exited with {proxy.process.returncode}, see {proxy.log_path}"
            )
        try:
            response = await ctx.admin.http.get(proxy.base + "/readyz", timeout=1)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        ready = response.json().get("servers") or {}
        return len(ready) == servers and all(ready.values())

    return await poll_until("fleet proxy: broadcast application on every server", check, cap)


async def _wait_apps(admins: list[Admin], app: str, cap: float = 10) -> None:
    async def check() -> bool:
        for admin in admins:
            if app not in await admin.applications():
                return False
        return True

    await poll_until(f"{app} registered on {len(admins)} server(s)", check, cap)


# -- 1: routing cost ------------------------------------------------------------------------------


async def _first_request(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """One GET (httpx, from the orchestrator), then a second: the first finds the holder."""
    out: dict[str, Any] = {}
    for key in ("first_ms", "second_ms"):
        t0 = time.perf_counter()
        response = await http.get(url)
        out[key] = round((time.perf_counter() - t0) * 1000, 3)
        out[key.replace("_ms", "_status")] = response.status_code
    return out


async def routing(
    ctx: Context,
    fleet_proxy: ProxyInstance,
    admins: list[Admin],
    tag: str,
    n: int,
    warmup: int,
) -> dict[str, Any]:
    main, last = admins[0], admins[-1]
    held = [Held(admin, f"{tag}-hold{i + 1}") for i, admin in enumerate(admins)]
    out: dict[str, Any] = {"n": n, "warmup": warmup, "rows": []}
    try:
        for h in held:
            await h.open()
        one, three = ctx.proxy.base, fleet_proxy.base
        # Before any warm-up: how the three-server proxy finds a channel it has not seen.
        out["first_lookup"] = {
            "server 1": await _first_request(main.http, f"{three}/ari/channels/{held[0].id}"),
            f"server {len(admins)}": await _first_request(
                main.http, f"{three}/ari/channels/{held[-1].id}"
            ),
        }
        cases = [
            ("channels/{id}", f"channels/{held[0].id}", main.asterisk, True),
            ("asterisk/info", "asterisk/info", main.asterisk, True),
            ("channels", "channels", main.asterisk, True),
            (
                f"channels/{{id}} on server {len(admins)}",
                f"channels/{held[-1].id}",
                last.asterisk,
                False,
            ),
        ]
        for label, path, direct, with_one in cases:
            targets = {"direct": direct, "proxy_1": one, "proxy_3": three}
            if not with_one:
                del targets["proxy_1"]
            names = list(targets)
            urls = [f"{targets[k]}/ari/{path}" for k in names]
            ctx.log(
                f"  fleet: GET /ari/{label} x {n}: {', '.join(names)}, interleaved"
                + ("" if with_one else " (the one-server proxy does not reach that server)")
            )
            pids = {"proxy_1": ctx.proxy.pid, "proxy_3": fleet_proxy.pid}
            cpu0 = {k: cpu_seconds([pid]) for k, pid in pids.items()}
            try:
                series = await ctx.app_workers[0].call(
                    "http_sequential", urls=urls, n=n, warmup=warmup
                )
            except WorkerError as exc:
                error = str(exc).strip().splitlines()[-1]
                ctx.log(f"    FAILED: {error}")
                out["rows"].append({"request": label, "error": error})
                continue
            cpu1 = {k: cpu_seconds([pid]) for k, pid in pids.items()}
            lat = dict(zip(names, series, strict=True))
            row: dict[str, Any] = {
                "request": label,
                "ms": {k: ms(v) for k, v in lat.items()},
                "added_p50_ms": {},
                "added_p99_ms": {},
                "paired_added_p50_ms": {},
                "proxy_cpu_ms_per_1000": {},
            }
            for k in names[1:]:
                key = k.removeprefix("proxy_")
                row["added_p50_ms"][key] = round(
                    row["ms"][k]["p50"] - row["ms"]["direct"]["p50"], 3
                )
                row["added_p99_ms"][key] = round(
                    row["ms"][k]["p99"] - row["ms"]["direct"]["p99"], 3
                )
                paired = [p - d for d, p in zip(lat["direct"], lat[k], strict=True)]
                row["paired_added_p50_ms"][key] = round((pct(paired, 50) or 0.0) * 1000, 3)
                # the proxy's CPU over the run (its own requests, warm-up included; the other
                # proxy's requests do not reach it)
                row["proxy_cpu_ms_per_1000"][key] = round(
                    (cpu1[k] - cpu0[k]) * 1000 / (n + warmup) * 1000, 1
                )
            out["rows"].append(row)
            m = row["ms"]
            ctx.log(
                "    p50/p99 ms: "
                + ", ".join(f"{k} {m[k]['p50']}/{m[k]['p99']}" for k in names)
                + "; added p50 "
                + ", ".join(
                    f"{k} server(s) {v} (paired {row['paired_added_p50_ms'][k]})"
                    for k, v in row["added_p50_ms"].items()
                )
                + "; proxy CPU ms/1000 req "
                + ", ".join(f"{k}: {v}" for k, v in row["proxy_cpu_ms_per_1000"].items())
            )
    finally:
        for h in held:
            await h.close()
    return out


# -- 2: events relay ------------------------------------------------------------------------------


async def _probe(base: str, admin: Admin, cap: float = 10) -> bool | str:
    """Through `base`, does one short flood on `admin`'s server end (its end event arrives)?
    A string: what went wrong (no socket, no flood)."""
    try:
        return await _probe_once(base, admin, cap)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:120]


async def _probe_once(base: str, admin: Admin, cap: float) -> bool:
    app = f"fleet-probe-{int(time.monotonic() * 1000)}"
    ws_base = "ws" + base[len("http") :]
    async with connect(
        f"{ws_base}/ari/events?app={app}&subscribeAll=true",
        additional_headers={"authorization": BASIC},
        max_size=None,
        ping_interval=None,
    ) as ws:
        await asyncio.sleep(0.5)
        await admin.originate_flood(10)
        deadline = time.monotonic() + cap
        with contextlib.suppress(TimeoutError):
            while time.monotonic() < deadline:
                frame = await asyncio.wait_for(ws.recv(), deadline - time.monotonic())
                if END_MARKER in str(frame):
                    return True
    return False


async def _floods_over(admins: list[Admin], cap: float) -> list[float | None]:
    """Per server: seconds until its flood channels were gone (Asterisk published the whole
    flood), None if not within `cap`."""
    started = time.monotonic()
    done: list[float | None] = [None] * len(admins)
    while time.monotonic() - started < cap:
        for i, admin in enumerate(admins):
            if done[i] is None:
                with contextlib.suppress(httpx.HTTPError):
                    if not await admin.channels():
                        done[i] = round(time.monotonic() - started, 2)
        if all(d is not None for d in done):
            break
        await asyncio.sleep(0.25)
    return done


def _drops(proxy: ProxyInstance, admins: list[Admin]) -> list[int]:
    """Per server: how many times the proxy's log says its events socket went away."""
    text = proxy.log_path.read_text(errors="replace")
    went = [ln for ln in text.splitlines() if "went away" in ln]
    return [sum(f" {a.asterisk.split('://', 1)[1]} " in ln for ln in went) for a in admins]


async def relay(
    ctx: Context,
    fleet_proxy: ProxyInstance,
    admins: list[Admin],
    extras: list[AsteriskInstance],
    iterations: int,
    loops: int,
    rounds: int,
    cap: float,
) -> dict[str, Any]:
    """`cap`: for every server's flood to end on Asterisk; then as long again (at least
    10 s) for the last end events to come through."""
    # fleet: every server floods `iterations`; fleet_split: every server a third of them (the
    # direct run's events in all, from three servers at once)
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "fleet": [], "fleet_split": []}
    order = list(runs)
    worker = ctx.app_workers[0]
    for r in range(rounds):
        for target in order if r % 2 == 0 else order[::-1]:
            flooding = admins[:1] if target == "direct" else admins
            base = ctx.asterisk.base if target == "direct" else fleet_proxy.base
            each = iterations // len(admins) if target == "fleet_split" else iterations
            app = f"{ctx.tag(target)}-relay"
            await worker.call("relay_open", base=base, app=app)
            await _wait_apps(flooding, app)
            drops0 = _drops(fleet_proxy, flooding)
            meter = CpuMeter(ctx)
            fleet_cpu0 = cpu_seconds([fleet_proxy.pid])
            extra_pids = [p for p in (e.pid for e in extras) if p]
            extras_cpu0 = cpu_seconds(extra_pids)
            expected = loops * len(flooding)
            await asyncio.gather(
                *(admin.originate_flood(each) for admin in flooding for _ in range(loops))
            )
            over = await _floods_over(flooding, cap)
            longest = max((s for s in over if s is not None), default=cap)
            result = await worker.call("relay_wait", ends=expected, timeout=max(10.0, longest))
            cpu = meter.stop()
            cpu["fleet_proxy_cpu_s"] = round(cpu_seconds([fleet_proxy.pid]) - fleet_cpu0, 2)
            cpu["extra_asterisks_cpu_s"] = round(cpu_seconds(extra_pids) - extras_cpu0, 2)
            result["cpu"] = cpu
            result["servers"] = len(flooding)
            result["expected_ends"] = expected
            result["complete"] = result["ends"] >= expected and not result["error"]
            result["flood_s"] = over  # per server, on Asterisk's side
            result["rate"] = (
                round(result["events"] / result["seconds"]) if result["seconds"] else None
            )
            left = await asyncio.gather(*(a.wait_no_channels() for a in flooding))
            result["channels_left"] = list(left)
            await asyncio.sleep(0.2)  # the proxy's log lines are written by a thread
            result["upstream_drops"] = [
                b - a for a, b in zip(drops0, _drops(fleet_proxy, flooding), strict=True)
            ]
            if not result["complete"]:
                # Do the servers' events come through at all? One short flood each, alone.
                result["probe"] = {
                    f"server {i + 1}": await _probe(base, a) for i, a in enumerate(flooding)
                }
                await asyncio.gather(*(a.wait_no_channels() for a in flooding))
            runs[target].append(result)
            seconds = "-" if result["seconds"] is None else f"{result['seconds']:.2f}"
            problem = result["error"] or ""
            if result["close_code"] not in (None, 1000):
                problem += f" (socket closed with {result['close_code']})"
            if any(left):
                problem += f" (flood channels left per server: {list(left)})"
            result["iterations_each"] = each
            if target != "direct" and any(result["upstream_drops"]):
                problem += (
                    " (Asterisk closed the proxy's events socket, per server: "
                    f"{result['upstream_drops']})"
                )
            if "probe" in result:
                problem += f" (afterwards, a short flood's end arrived: {result['probe']})"
            ctx.log(
                f"  fleet relay {target} ({len(flooding)} server(s) flooding {each} each, over on "
                f"Asterisk after {over} s): {result['events']} events, {result['ends']}/"
                f"{expected} ends, {seconds} s to the last end = {result['rate']}/s {problem}"
            )
    summary = mean_rates(runs)
    # Events one flood loop makes (the direct runs, complete ones): what 3 servers should send.
    per_loop = [x["events"] / loops for x in runs["direct"] if x["complete"]]
    delivered: dict[str, float | None] = {}
    for target, share in (("fleet", 1.0), ("fleet_split", 1 / len(admins))):
        delivered[target] = None
        if per_loop and runs[target]:
            want = sum(per_loop) / len(per_loop) * loops * len(admins) * share
            got = sum(x["events"] for x in runs[target]) / len(runs[target])
            delivered[target] = round(got / want, 3)
    return {
        "iterations": iterations,
        "loops": loops,
        "runs": runs,
        "events_per_s": summary,
        "ratio": ratio(summary["fleet"], summary["direct"]),
        "ratio_split": ratio(summary["fleet_split"], summary["direct"]),
        "complete": {t: all(x["complete"] for x in rs) for t, rs in runs.items()},
        "fleet_delivered_share": delivered,
    }


# -- the section ---------------------------------------------------------------------------------


async def fleet(
    ctx: Context,
    n: int,
    warmup: int,
    iterations: int,
    loops: int,
    rounds: int,
    relay_cap: float = 120,
) -> dict[str, Any]:
    log_path = getattr(ctx.proxy, "log_path", None)
    logs = Path(log_path).parent if log_path else Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    extras: list[AsteriskInstance] = []
    proxy: ProxyInstance | None = None
    admins: list[Admin] = []
    out: dict[str, Any] = {"servers": 1 + EXTRA, "broadcast_app": FLEET_APP}
    try:
        for i in range(2, 2 + EXTRA):
            instance = AsteriskInstance(f"{ctx.asterisk.name}-fleet{i}")
            extras.append(instance)
            started = time.monotonic()
            instance.up(systemname=f"fleet{i}")
            ctx.log(
                f"  fleet: Asterisk {instance.name!r} (systemname fleet{i}) on {instance.base} "
                f"up in {time.monotonic() - started:.1f} s"
            )
        upstreams = [ctx.asterisk.base] + [e.base for e in extras]
        extra_args = [a for e in extras for a in ("--upstream", e.base)]
        proxy = ProxyInstance(
            upstreams[0], logs / "proxy-fleet.log", *extra_args, "--broadcast-app", FLEET_APP
        )
        ctx.add_process("proxy", proxy.pid)
        took = await _wait_fleet_ready(ctx, proxy, len(upstreams), cap=30)
        out["ready_s"] = round(took, 2)
        ctx.log(
            f"  fleet: proxy on {proxy.base} over {len(upstreams)} servers, ready in {took:.1f} s"
        )
        admins = [ctx.admin] + [Admin(e.base, proxy.base) for e in extras]
        out["routing"] = await routing(ctx, proxy, admins, ctx.tag("fleet"), n, warmup)
        out["relay"] = await relay(ctx, proxy, admins, extras, iterations, loops, rounds, relay_cap)
        r = out["relay"]
        ctx.log(
            f"  fleet relay: direct (1 server) {r['events_per_s']['direct']}/s, "
            f"through the proxy ({len(upstreams)} servers) {r['events_per_s']['fleet']}/s, "
            f"ratio {r['ratio']}; a third each: {r['events_per_s']['fleet_split']}/s, ratio "
            f"{r['ratio_split']}; delivered share {r['fleet_delivered_share']}"
        )
    finally:
        for admin in admins[1:]:
            with contextlib.suppress(Exception):
                await admin.aclose()
        if proxy is not None:
            ctx.retire_process("proxy", proxy.pid)
            proxy.stop()
            text = proxy.log_path.read_text(errors="replace")
            out["proxy_log"] = {
                "path": str(proxy.log_path),
                "warnings": text.count(" WARNING "),
                "errors": text.count(" ERROR "),
                "first_warnings": [ln[:200] for ln in text.splitlines() if " WARNING " in ln][:3],
            }
        for instance in extras:
            instance.down()
    return out

"""Section `replicas`: the proxy as 1, 2 and 3 replicas sharing one real redis-server, against
the single proxy without Redis (the baseline: the benchmark's own proxy), on the same Asterisk
in the same run.

For each setup, in this order (baseline, then 1, 2, 3 replicas; every setup started fresh and
stopped before the next, so each has the machine to itself):

- ten racing applications, application i connected to replica i mod N, each claiming every
  call through its own replica and letting the calls it wins go (`continue`) there;
- idle Redis traffic: `ari_proxy_cluster_operations` summed over the replicas, over
  `idle_seconds` with the applications connected and no call (lease renewals and polls,
  announcements);
- latency: `latency_calls` paced at `latency_rate`: claim latency (the winner's CallBroadcast
  received -> its 204), broadcast latency, claim -> StasisStart, and Redis operations per
  call: the counter's rise over the calls (read from every replica before, and after the last
  call ended and no replica holds a broadcast any more), divided by the calls: raw, and net
  of the idle rate over the same window;
- throughput: the throughput section's ladder (`sections.ladder`, the same steps and
  pass criterion, plus: no backlog), calls/s sustained, with Redis operations per call for
  every step.

Calls run the same dialplan on every setup ([bench-proxy], the drop-in subroutine), with the
broadcast application given per call (`__ARI_BROADCAST_APP`): the baseline proxy's
`broadcast`, or the cluster's own `bench-cluster-N` (each cluster a scope of its own in Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from tests.redis_server import RedisServer

from . import sections
from .sections import Context, ladder, poll_until, ratio, run_calls
from .stack import ProxyInstance, _die_with_parent, cpu_seconds

# The periods of the replicas' own loops (ari_broadcast_proxy/cluster: the leader renews its
# lease, a follower tries for it, every replica announces its applications), copied rather
# than imported, so that the benchmark does not break when the package moves them: they only
# give the idle traffic to expect, and the renewals to leave out of Redis's script count.
RENEW_EVERY = 0.5
POLL_EVERY = 0.25
ANNOUNCE_EVERY = 1.0
OPERATIONS = "ari_proxy_cluster_operations"
LEADER = "ari_proxy_broadcast_leader"
IN_FLIGHT = "ari_proxy_broadcasts_in_flight"
CONTEXT = "bench-proxy"  # the same dialplan for every setup
LATE = "claimed, but StasisStart came more than"  # sections.analyze's failure for a late start
BASELINE_APP = "broadcast"  # the benchmark proxy's broadcast application (its default)


class BenchRedis(RedisServer):
    """The tests' RedisServer (free port, no persistence, own directory, `close()` kills it),
    started as the benchmark starts its proxy: in its own session (Ctrl-C is the benchmark's
    to handle, in order) and ended by the kernel if the benchmark dies without cleaning up."""

    def popen_options(self) -> dict[str, Any]:
        return {
            "start_new_session": True,
            "preexec_fn": _die_with_parent,  # started from the main thread
        }


class Setup:
    """One setup under test: the baseline proxy, or N replicas started for it."""

    def __init__(self, ctx: Context, replicas: int, redis: BenchRedis | None, logs: Path) -> None:
        self.ctx = ctx
        self.n = replicas
        self.key = f"redis-{replicas}" if replicas else "no-redis"
        self.label = (
            "1 proxy, no Redis"
            if not replicas
            else f"{replicas} replica{'s' if replicas > 1 else ''} + Redis"
        )
        self.app = f"bench-cluster-{replicas}" if replicas else BASELINE_APP
        self.instances: list[ProxyInstance] = []
        if replicas:
            assert redis is not None
            try:
                for i in range(1, replicas + 1):
                    instance = ProxyInstance(
                        ctx.asterisk.base,
                        logs / f"replica-{replicas}-r{i}.log",
                        "--cluster-url",
                        redis.url,
                        "--replica-id",
                        f"r{i}",
                        "--broadcast-app",
                        self.app,
                    )
                    self.instances.append(instance)
                    ctx.add_process("proxy", instance.pid)
            except BaseException:
                self.stop()
                raise

    @property
    def bases(self) -> list[str]:
        return [i.base for i in self.instances] or [self.ctx.proxy.base]

    @property
    def scope(self) -> str:
        """The cluster's keys in Redis (as the proxy's Config.cluster_scope names them)."""
        return f"{httpx.URL(self.ctx.asterisk.base).netloc.decode()}/{self.app}"

    def apps_key(self, replica: str) -> str:
        """The set in which a replica announces its applications (cluster/store.py's Keys)."""
        return f"abp:{{{self.scope}}}:apps:{replica}"

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to every replica at once (the leader hands over while the others go too),
        SIGKILL to any left after `timeout` s; their CPU stays counted."""
        for instance in self.instances:
            self.ctx.retire_process("proxy", instance.pid)
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for instance in self.instances:
            with contextlib.suppress(subprocess.TimeoutExpired):
                instance.process.wait(max(0.0, deadline - time.monotonic()))
        for instance in self.instances:
            instance.stop(timeout=2)  # SIGKILL if still there; closes its log


async def _metrics(http: httpx.AsyncClient, base: str, names: tuple[str, ...]) -> dict[str, float]:
    text = (await http.get(base + "/metrics", timeout=2)).text
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            out[name] = float(value)
    return out


async def _sum(ctx: Context, setup: Setup, name: str) -> float:
    values = await asyncio.gather(
        *(_metrics(ctx.admin.http, base, (name,)) for base in setup.bases)
    )
    return sum(v.get(name, 0.0) for v in values)


async def _wait_cluster(ctx: Context, setup: Setup, cap: float = 30) -> float:
    """Until every replica answers /readyz 200 and exactly one leads."""

    async def check() -> bool:
        for instance in setup.instances:
            if instance.process.poll() is not None:
                raise RuntimeError(
                    f"replica exited with {instance.process.returncode}, see {instance.log_path}"
                )
        try:
            for base in setup.bases:
                if (await ctx.admin.http.get(base + "/readyz", timeout=1)).status_code != 200:
                    return False
            return await _sum(ctx, setup, LEADER) == 1
        except httpx.HTTPError:
            return False

    return await poll_until(f"{setup.label}: ready with one leader", check, cap)


async def _wait_apps(
    ctx: Context, setup: Setup, names: list[str], store: aioredis.Redis | None, cap: float = 15
) -> None:
    """Until Asterisk lists every application and the proxies know them: each its own
    (/readyz), and for a cluster Redis too, where each replica announces its own (the leader
    offers calls to what the replicas announce; skipped if no such set is found, should the
    proxy name its keys otherwise one day: the warm-up calls come first anyway)."""
    want = set(names)

    async def check() -> bool:
        if not want <= await ctx.admin.applications():
            return False
        connected = 0
        for base in setup.bases:
            ready = (await ctx.admin.http.get(base + "/readyz", timeout=1)).json()
            connected += ready["connected_applications"]
        if connected < len(want):
            return False
        if store is None:
            return True
        keys = [setup.apps_key(f"r{i}") for i in range(1, setup.n + 1)]
        if not await store.exists(*keys):
            return True
        announced: set[str] = set()
        for key in keys:
            announced |= {str(m) for m in await store.smembers(key)}
        return want <= announced

    await poll_until(f"{setup.label}: applications registered", check, cap)


async def _quiet(ctx: Context, setup: Setup, cap: float = 10) -> None:
    """Until no replica holds a broadcast (its last Redis writes done)."""

    async def check() -> bool:
        return await _sum(ctx, setup, IN_FLIGHT) == 0

    with contextlib.suppress(RuntimeError):  # a straggler is visible in the figures anyway
        await poll_until(f"{setup.label}: no broadcast in flight", check, cap)


async def _commandstats(store: aioredis.Redis | None) -> dict[str, int]:
    """Redis's own count of the commands it ran, by command (those run by scripts too)."""
    if store is None:
        return {}
    stats = await store.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def expected_idle(n: int) -> float:
    """Round trips per second a cluster of `n` replicas makes with no call, by the periods
    of its loops: the leader renews its lease, the followers try for it, every replica
    announces its applications and lists the others' (3 round trips)."""
    return round(1 / RENEW_EVERY + (n - 1) / POLL_EVERY + 3 * n / ANNOUNCE_EVERY, 1)


async def _counted(
    ctx: Context,
    setup: Setup,
    store: aioredis.Redis | None,
    idle_rate: float | None,
    run: Awaitable[dict[str, Any]],
) -> dict[str, Any]:
    """Run some calls (`run_calls`) and count what they cost in Redis round trips (all
    replicas' counters, and Redis's own count of scripts run) and per-replica CPU, from
    before the first call to after the last one ended."""
    pids = [i.pid for i in setup.instances]
    counting = bool(setup.instances)
    before = await _sum(ctx, setup, OPERATIONS) if counting else 0.0
    stats_before = await _commandstats(store)
    cpu_before = [cpu_seconds([pid]) for pid in pids]
    t0 = time.monotonic()
    row = await run
    await _quiet(ctx, setup)
    after = await _sum(ctx, setup, OPERATIONS) if counting else 0.0
    stats_after = await _commandstats(store)
    window = time.monotonic() - t0
    if pids:
        row["cpu"]["replica_cores"] = [
            round((cpu_seconds([pid]) - start) / window, 3)
            for pid, start in zip(pids, cpu_before, strict=True)
        ]
    if counting:
        total = after - before
        calls = max(1, row["calls"])
        net = total - (idle_rate or 0.0) * window
        row["redis_ops"] = {
            "total": int(total),
            "window_s": round(window, 2),
            "per_call_raw": round(total / calls, 2),
            "per_call_net": round(net / calls, 2),
        }
        if stats_after:
            delta = {k: v - stats_before.get(k, 0) for k, v in stats_after.items()}
            # Every per-call decision is one script (offer, claims, session, end, verdicts);
            # the background's scripts are the announcements (the one script that runs
            # ZREMRANGEBYSCORE) and the lease renewals (the leader's, at their period).
            scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
            announces = delta.get("zremrangebyscore", 0)
            renewals = window / RENEW_EVERY
            row["redis_ops"].update(
                scripts=scripts,
                announcements=announces,
                scripts_per_call=round((scripts - announces - renewals) / calls, 2),
            )
    return row


async def _measure(
    ctx: Context,
    setup: Setup,
    store: aioredis.Redis | None,
    *,
    apps: int,
    rates: list[float],
    step_seconds: float,
    min_calls: int,
    backlog_ms: float,
    latency_calls: int,
    latency_rate: float,
    warmup: int,
    idle_seconds: float,
    context: str,
    data_variable: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"setup": setup.label, "replicas": setup.n, "broadcast_app": setup.app}
    if setup.instances:
        took = await _wait_cluster(ctx, setup)
        out["ready_s"] = round(took, 2)
        ctx.log(f"    {setup.n} replica(s) ready, one leading, after {took:.1f} s")
    tag = ctx.tag(setup.key)
    names = [f"{tag}-app{i}" for i in range(apps)]
    await sections._open_apps(ctx, "proxy", names, names, bases=setup.bases, wait=False)
    try:
        await _wait_apps(ctx, setup, names, store)

        variables = {"__ARI_BROADCAST_APP": setup.app}
        if data_variable:  # a dialplan that reads the broadcast's arguments elsewhere
            variables[f"__{data_variable}"] = sections.broadcast_data(names)

        def run(rate: float, calls: int) -> Awaitable[dict[str, Any]]:
            return run_calls(
                ctx,
                setup.key,
                apps=apps,
                racers=apps,
                rate=rate,
                calls=calls,
                keep_apps=True,
                names=names,
                context=context,
                variables=variables,
            )

        if warmup:  # connections made, every replica's mirror and audience current
            await run(latency_rate, warmup)
            await _quiet(ctx, setup)
        if setup.instances:
            stats = await _commandstats(store)
            before, t0 = await _sum(ctx, setup, OPERATIONS), time.monotonic()
            await asyncio.sleep(idle_seconds)  # the measurement window itself
            after, t1 = await _sum(ctx, setup, OPERATIONS), time.monotonic()
            announces = (await _commandstats(store)).get("zremrangebyscore", 0)
            announces -= stats.get("zremrangebyscore", 0)
            out["idle_ops_per_s"] = round((after - before) / (t1 - t0), 2)
            out["idle_expected_ops_per_s"] = expected_idle(setup.n)
            out["idle_announcements_per_s"] = round(announces / (t1 - t0), 2)
            ctx.log(
                f"    idle: {out['idle_ops_per_s']} Redis operations/s (all replicas; "
                f"{out['idle_expected_ops_per_s']}/s expected from the loops' periods), "
                f"{out['idle_announcements_per_s']} announcements/s"
            )
        idle = out.get("idle_ops_per_s")
        ctx.log(f"  replicas: {setup.label}: {latency_calls} calls at {latency_rate:g}/s")
        row = await _counted(ctx, setup, store, idle, run(latency_rate, latency_calls))
        out["latency"] = row
        ops = row.get("redis_ops")
        ctx.log(
            f"    claim (CallBroadcast -> 204) p50/p95 {row['claim_answer_ms']['p50']}/"
            f"{row['claim_answer_ms']['p95']} ms, broadcast p50 {row['broadcast_ms']['p50']} ms,"
            f" claimed {row['claimed']}/{row['calls']}"
            + (
                f"; Redis ops/call {ops['per_call_raw']} raw, {ops['per_call_net']} net, "
                f"scripts/call {ops.get('scripts_per_call')} (Redis's count)"
                if ops
                else ""
            )
            + (f" {row['failures']}" if row["failures"] else "")
        )

        async def step(_path: str, rate: float, calls: int) -> dict[str, Any]:
            return await _counted(ctx, setup, store, idle, run(rate, calls))

        out["throughput"] = await ladder(
            ctx, [setup.key], rates, step_seconds, step, apps, min_calls, backlog_ms, _sporadic
        )
        for s in out["throughput"]["steps"]:
            if s.get("redis_ops"):
                ctx.log(f"    {s['target_rate']:g}/s: Redis ops/call {s['redis_ops']}")
    finally:
        with contextlib.suppress(Exception):
            await sections._close_apps(ctx)
        with contextlib.suppress(Exception):
            await ctx.admin.wait_no_channels()
    return out


def _sporadic(row: dict[str, Any], reasons: dict[str, int]) -> bool:
    """Climb on past a step lost only to a few late StasisStarts (at most 1 % of its calls,
    no backlog, nothing else): what throttles the setup shows further up, and the summary
    tells the rate it kept up with from the rate it sustained by the rule."""
    return (row["claimed_ratio"] or 0) >= 0.99 and all(k.startswith(LATE) for k in reasons)


async def replicas(
    ctx: Context,
    counts: tuple[int, ...],
    rates: list[float],
    step_seconds: float,
    latency_calls: int,
    latency_rate: float,
    warmup: int,
    idle_seconds: float,
    apps: int = 10,
    min_calls: int = 30,
    backlog_ms: float = 500,
    context: str = CONTEXT,
    data_variable: str | None = None,
) -> dict[str, Any]:
    """`counts`: the cluster sizes, after the baseline; `context`/`data_variable`: the
    dialplan the calls run (default [bench-proxy], which reads BENCH_DATA)."""
    log_dir = getattr(ctx.proxy, "log_path", None)
    own_dir = None
    if log_dir is None:
        own_dir = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
        logs = own_dir
    else:
        logs = Path(log_dir).parent
    params: dict[str, Any] = {
        "apps": apps,
        "rates": rates,
        "step_seconds": step_seconds,
        "min_calls": min_calls,
        "backlog_ms": backlog_ms,
        "latency_calls": latency_calls,
        "latency_rate": latency_rate,
        "warmup": warmup,
        "idle_seconds": idle_seconds,
        "context": context,
        "data_variable": data_variable,
    }
    server = BenchRedis()
    store: aioredis.Redis | None = None
    setups: list[dict[str, Any]] = []
    try:
        ctx.add_process("redis", server.pid or 0)
        store = aioredis.Redis(host="127.0.0.1", port=server.port, decode_responses=True)
        ctx.log(f"  redis-server on {server.url}")
        for n in (0, *counts):
            started = time.monotonic()
            setup = Setup(ctx, n, server if n else None, logs)
            ctx.log(f"  replicas: {setup.label}")
            try:
                result = await _measure(ctx, setup, store if n else None, **params)
            finally:
                setup.stop()
            result["seconds"] = round(time.monotonic() - started, 1)
            setups.append(result)
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                await store.aclose()
        ctx.retire_process("redis", server.pid or 0)
        server.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return {"apps": apps, "settings": params, "setups": setups, "summary": summarize(setups)}


def summarize(setups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per setup, ratios against the baseline (the first, no Redis)."""
    rows = []
    base = setups[0] if setups else None
    for s in setups:
        lat = s["latency"]
        best = _best(s)
        kept = _kept_up(s)
        passed = [x for x in s["throughput"]["steps"] if x["passed"]]
        top = passed[-1] if passed else None
        row = {
            "setup": s["setup"],
            "replicas": s["replicas"],
            "calls_per_s": best,
            "kept_up_to": kept,
            "broke_at": next(
                (x["target_rate"] for x in s["throughput"]["steps"] if not x["passed"]), None
            ),
            "claim_answer_ms": {k: lat["claim_answer_ms"][k] for k in ("p50", "p95")},
            "claim_to_start_ms": {k: lat["claim_to_start_ms"][k] for k in ("p50", "p95")},
            "broadcast_ms": {k: lat["broadcast_ms"][k] for k in ("p50", "p95")},
            "claimed": f"{lat['claimed']}/{lat['calls']}",
            "idle_ops_per_s": s.get("idle_ops_per_s"),
            "ops_per_call": lat.get("redis_ops"),
            "ops_per_call_at_top": (top or {}).get("redis_ops"),
            "top_rate": None if top is None else top["target_rate"],
        }
        if base is not None:
            b = base["latency"]
            row["ratio"] = {
                "calls_per_s": ratio(best, _best(base)),
                "kept_up_to": ratio(kept, _kept_up(base)),
                "claim_answer_p50": ratio(
                    lat["claim_answer_ms"]["p50"], b["claim_answer_ms"]["p50"]
                ),
                "claim_answer_p95": ratio(
                    lat["claim_answer_ms"]["p95"], b["claim_answer_ms"]["p95"]
                ),
                "broadcast_p50": ratio(lat["broadcast_ms"]["p50"], b["broadcast_ms"]["p50"]),
            }
        rows.append(row)
    return rows


def _kept_up(setup: dict[str, Any]) -> float | None:
    """The highest rate up to which every step passed or was lost only to a few late
    StasisStarts (`_sporadic`)."""
    kept = None
    for step in setup["throughput"]["steps"]:
        if not (step["passed"] or step.get("continued")):
            break
        kept = step["target_rate"]
    return kept


def _best(setup: dict[str, Any]) -> float | None:
    """The highest rate the setup sustained (None: not even the first step)."""
    best = setup["throughput"]["best"]
    return next(iter(best.values()), None)

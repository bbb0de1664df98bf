"""The measurements. Each section drives both paths with the same workers and code:

- native: StasisBroadcast() in [bench-native], applications connected to Asterisk itself,
  res_stasis_broadcast/app_stasis_broadcast loaded;
- proxy:  the drop-in subroutine in [bench-proxy], applications connected to the proxy,
  the native modules unloaded (DELETE /ari/asterisk/modules/...), loaded again afterwards.

Same Asterisk instance (so the same http.conf sessionlimit), same broadcast timeout and
filter, same client timeouts and pools; only the applications' base URL and the dialplan
context differ. Origination always goes straight to Asterisk.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from .stack import Admin, AsteriskInstance, ProxyInstance, cpu_seconds
from .workers import WorkerHandle

PATHS = ("native", "proxy")
CONTEXT = {"native": "bench-native", "proxy": "bench-proxy"}
TIMEOUT_MS = 5000  # the broadcast timeout on both paths
MAX_RACERS = 10


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ms(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99 (and n) in milliseconds."""
    out: dict[str, float | int | None] = {"n": len(values)}
    for p in (50, 95, 99):
        value = pct(values, p)
        out[f"p{p}"] = None if value is None else round(value * 1000, 3)
    return out


def percentiles(values: list[float]) -> list[float]:
    """p0, p1 ... p100 in milliseconds (empty without values): a distribution the charts
    draw, in 101 numbers whatever the count of calls."""
    if not values:
        return []
    return [round((pct(values, p) or 0.0) * 1000, 3) for p in range(101)]


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base to 3 places (None without both)."""
    if value is None or not base:
        return None
    return round(value / base, 3)


def mean_rates(runs: dict[str, list[dict[str, Any]]]) -> dict[str, int | None]:
    """Each target's mean `rate` over its runs (None when no run had one)."""
    summary: dict[str, int | None] = {}
    for target, results in runs.items():
        rates = [r["rate"] for r in results if r["rate"]]
        summary[target] = round(sum(rates) / len(rates)) if rates else None
    return summary


async def poll_until(what: str, check: Any, cap: float, every: float = 0.05) -> float:
    """Poll `check()` (async, truthy when done) every `every` s, at most `cap` s; the seconds
    it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started >= cap:
            raise RuntimeError(f"{what}: not after {cap:g} s")
        await asyncio.sleep(every)


@dataclass
class Context:
    asterisk: AsteriskInstance
    proxy: ProxyInstance
    admin: Admin
    app_workers: list[WorkerHandle]
    originator: WorkerHandle
    cores: int = field(default_factory=lambda: psutil.cpu_count() or 1)
    log: Any = print
    # Processes a section starts and stops itself (the replicas, redis-server), by CPU bucket
    # ("proxy", "redis"): counted while they run, and their CPU once they ended, so that a
    # meter spanning their life sees all of it.
    extra_pids: dict[str, list[int]] = field(default_factory=dict)
    retired_cpu: dict[str, float] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))

    def tag(self, path: str) -> str:
        return f"b{next(self._seq)}{path[0]}"

    def base(self, path: str) -> str:
        return self.asterisk.base if path == "native" else self.proxy.base

    @property
    def generator_pids(self) -> list[int]:
        return [w.pid for w in (*self.app_workers, self.originator)]

    def cpu(self, bucket: str, *own: int) -> float:
        """CPU seconds so far of a bucket's extra processes (plus `own`), ended ones included."""
        pids = [*own, *self.extra_pids.get(bucket, [])]
        return cpu_seconds(pids) + self.retired_cpu.get(bucket, 0.0)

    def add_process(self, bucket: str, pid: int) -> None:
        self.extra_pids.setdefault(bucket, []).append(pid)

    def retire_process(self, bucket: str, pid: int) -> None:
        """Before stopping one: its CPU so far stays in the bucket's count."""
        pids = self.extra_pids.get(bucket, [])
        if pid in pids:
            self.retired_cpu[bucket] = self.retired_cpu.get(bucket, 0.0) + cpu_seconds([pid])
            pids.remove(pid)


class CpuMeter:
    """CPU used by the generator (worker processes), the proxy and Asterisk over a window,
    as a share of the machine (wall time x cores)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.wall = time.monotonic()
        self._per_worker: list[float] = []
        self.start = self._sample()
        self._per_worker_start = self._per_worker

    def _sample(self) -> dict[str, float]:
        machine = psutil.cpu_times()
        self._per_worker = [cpu_seconds([pid]) for pid in self.ctx.generator_pids]
        return {
            "generator": cpu_seconds(self.ctx.generator_pids),
            "proxy": self.ctx.cpu("proxy", self.ctx.proxy.pid),  # with any replicas
            "redis": self.ctx.cpu("redis"),
            "asterisk": cpu_seconds([self.ctx.asterisk.pid] if self.ctx.asterisk.pid else []),
            "busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
        }

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        end = self._sample()
        out = {"wall_s": round(wall, 2)}
        used = {key: value - self.start[key] for key, value in end.items()}
        # Everything else the machine ran meanwhile (other processes, the kernel's own work):
        # the benchmark owns the machine only if this stays near zero.
        used["other"] = max(0.0, used.pop("busy") - sum(used.values()))
        for key, value in used.items():
            out[f"{key}_cpu_s"] = round(value, 2)
            out[f"{key}_share"] = round(value / (wall * self.ctx.cores), 3) if wall else 0.0
        # Each worker is one event loop on one core: the busiest one near 100 % of a core
        # means the generator, not the system under test, set the pace.
        busiest = max(
            (b - a for a, b in zip(self._per_worker_start, self._per_worker, strict=True)),
            default=0.0,
        )
        out["generator_busiest_core"] = round(busiest / wall, 3) if wall else 0.0
        out["proxy_core"] = round(used["proxy"] / wall, 3) if wall else 0.0  # one event loop
        return out


# -- broadcast calls ------------------------------------------------------------------------------


async def _open_apps(
    ctx: Context,
    path: str,
    names: list[str],
    racers: list[str],
    bases: list[str] | None = None,
    wait: bool = True,
) -> None:
    """Application i in worker i mod workers, connected to bases[i mod len(bases)] (default:
    the path's one base); `wait`: until Asterisk (and the proxy) know every one."""
    await ctx.admin.set_native_modules(path == "native")
    shards: list[list[str]] = [[] for _ in ctx.app_workers]
    for i, name in enumerate(names):
        shards[i % len(shards)].append(name)
    own = {name: bases[i % len(bases)] for i, name in enumerate(names)} if bases else None
    await asyncio.gather(
        *(
            w.call(
                "apps_open",
                base=ctx.base(path),
                names=shard,
                claimers=racers,
                bases=None if own is None else {n: own[n] for n in shard},
            )
            for w, shard in zip(ctx.app_workers, shards, strict=True)
            if shard
        )
    )
    if wait:
        await ctx.admin.wait_registered(names, via_proxy=path == "proxy")


async def _close_apps(ctx: Context) -> None:
    await asyncio.gather(*(w.call("apps_close") for w in ctx.app_workers))


async def _collect(ctx: Context) -> dict[str, list[Any]]:
    parts = await asyncio.gather(*(w.call("apps_collect") for w in ctx.app_workers))
    merged: dict[str, list[Any]] = {}
    for part in parts:
        for key, values in part.items():
            merged.setdefault(key, []).extend(values)
    return merged


async def _wait_resolved(ctx: Context, expected_starts: int, deadline: float) -> None:
    """Until every call got its StasisStart, or the broadcast timeout (+ grace) has passed."""
    while time.monotonic() < deadline:
        progress = await asyncio.gather(*(w.call("apps_progress") for w in ctx.app_workers))
        if sum(p[2] for p in progress) >= expected_starts:
            return
        await asyncio.sleep(0.05)


def broadcast_data(names: list[str], timeout_ms: int = TIMEOUT_MS) -> str:
    """The broadcast's arguments: the timeout, and the same filter on every path: only this
    run's applications (named `<run tag>-appN`)."""
    prefix = names[0].rsplit("-", 1)[0]
    return f"{timeout_ms},^{prefix}-"


async def run_calls(
    ctx: Context,
    path: str,
    *,
    apps: int,
    racers: int,
    rate: float,
    calls: int,
    warmup: int = 0,
    timeout_ms: int = TIMEOUT_MS,
    keep_apps: bool = False,
    names: list[str] | None = None,
    context: str | None = None,
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Originate `calls` at `rate` into the path's broadcast with `apps` connected
    applications, `racers` of which claim every call they are offered. `names`: applications
    already open (then `apps`/`racers` only label the row); `context`/`variables`: another
    dialplan context than the path's, channel variables for both legs."""
    tag = ctx.tag(path)
    if names is None:
        names = [f"{tag}-app{i}" for i in range(apps)]
        await _open_apps(ctx, path, names, names[:racers])
    data = broadcast_data(names, timeout_ms)
    grace = timeout_ms / 1000 + 2.0

    async def originate(count: int, run_tag: str) -> dict[str, Any]:
        result = await ctx.originator.call(
            "originate",
            asterisk=ctx.asterisk.base,
            context=context or CONTEXT[path],
            data=data,
            rate=rate,
            count=count,
            tag=run_tag,
            variables=variables,
        )
        ok = sum(1 for c in result["calls"] if c[3] == 200)
        await _wait_resolved(ctx, ok, time.monotonic() + grace)
        return result

    if warmup:
        await originate(warmup, f"{tag}w")
        await ctx.admin.wait_no_channels()
        await _collect(ctx)
    meter = CpuMeter(ctx)
    result = await originate(calls, tag)
    cpu = meter.stop()
    records = await _collect(ctx)
    if not keep_apps:
        await _close_apps(ctx)
    leftover = await ctx.admin.wait_no_channels()
    out = analyze(result["calls"], records, racers, timeout_ms)
    sent = [c[1] for c in result["calls"]]
    span = max(sent) - min(sent) if len(sent) > 1 else 0.0
    out.update(
        path=path,
        apps=apps,
        racers=racers,
        target_rate=rate,
        achieved_rate=round((len(sent) - 1) / span, 2) if span else None,
        schedule_lag_ms=round(result["lag"] * 1000, 1),
        leftover_channels=leftover,
        cpu=cpu,
    )
    return out


def analyze(
    calls: list[tuple[str, float, float, int, str]],
    records: dict[str, list[Any]],
    racers: int,
    timeout_ms: int = TIMEOUT_MS,
) -> dict[str, Any]:
    """Per call: claimed = the winner got StasisStart within the broadcast timeout counted
    from origination (a caller kept waiting longer than that is a failure, even if a
    backlog somewhere delivered the broadcast late and it was claimed then)."""
    sent = {c[0]: c[1] for c in calls}
    originate_failed = {c[0]: (c[4] or f"HTTP {c[3]}") for c in calls if c[3] != 200}
    offered: dict[str, set[str]] = {}
    broadcast_latency = []
    for channel_id, app, received in records["broadcasts"]:
        if channel_id in sent:
            offered.setdefault(channel_id, set()).add(app)
            broadcast_latency.append(received - sent[channel_id])
    claims_by_call: dict[str, list[tuple[str, float, float, int, str]]] = {}
    claim_outcomes: Counter[str] = Counter()
    claim_wait = []
    claim_rtt_all = []
    for channel_id, app, t_sent, t_acquired, t_answered, status, error in records["claims"]:
        if channel_id in sent:
            claims_by_call.setdefault(channel_id, []).append(
                (app, t_acquired, t_answered, status, error)
            )
            claim_outcomes[error or str(status)] += 1
            claim_wait.append(t_acquired - t_sent)
            claim_rtt_all.append(t_answered - t_acquired)
    starts = {(c, a): t for c, a, t in records["starts"]}
    limit = timeout_ms / 1000
    started_calls = {c for (c, _a), t in starts.items() if c in sent and t - sent[c] <= limit}
    started_late = {c for (c, _a), t in starts.items() if c in sent} - started_calls
    # Claims are "sent" when the request got a connection (`claim_client_wait_ms` is the time
    # before that, spent in the generator's own connection gate).
    claim_latency = []  # the winning claim sent -> the winner's StasisStart
    claim_rtt = []  # the winning claim sent -> its 204
    claim_answer = []  # the winner's CallBroadcast received -> its 204 (any wait included)
    end_to_end = []  # originate sent -> the winner's StasisStart
    offered_at = {(c, a): t for c, a, t, *_rest in records["claims"]}
    failures: Counter[str] = Counter()
    for channel_id, originated in sent.items():
        won = [c for c in claims_by_call.get(channel_id, []) if c[3] == 204]
        if won:
            app, t_sent, t_answered, _status, _error = won[0]
            claim_rtt.append(t_answered - t_sent)
            claim_answer.append(t_answered - offered_at[(channel_id, app)])
            if (channel_id, app) in starts:
                claim_latency.append(starts[(channel_id, app)] - t_sent)
                end_to_end.append(starts[(channel_id, app)] - originated)
        if channel_id in started_calls:
            continue
        if channel_id in started_late:
            failures[f"claimed, but StasisStart came more than {limit:g} s after origination"] += 1
        elif channel_id in originate_failed:
            failures[f"originate failed: {originate_failed[channel_id]}"] += 1
        elif channel_id not in offered:
            failures["no CallBroadcast reached any application"] += 1
        elif racers and not claims_by_call.get(channel_id):
            failures["offered, but no claim was answered"] += 1
        elif won:
            failures["claim won (204), winner never got StasisStart"] += 1
        else:
            seen = Counter(c[4] or str(c[3]) for c in claims_by_call.get(channel_id, []))
            failures["no claim won: " + ", ".join(f"{k} x{v}" for k, v in seen.items())] += 1
    total = len(sent)
    return {
        "calls": total,
        "claimed": len(started_calls),
        "claimed_ratio": round(len(started_calls) / total, 5) if total else None,
        "broadcast_ms": ms(broadcast_latency),
        "claim_to_start_ms": ms(claim_latency),
        "broadcast_percentiles_ms": percentiles(broadcast_latency),
        "claim_to_start_percentiles_ms": percentiles(claim_latency),
        "claim_rtt_ms": ms(claim_rtt),
        "claim_answer_ms": ms(claim_answer),
        "end_to_end_ms": ms(end_to_end),
        "claim_client_wait_ms": ms(claim_wait),
        "claim_rtt_all_ms": ms(claim_rtt_all),
        "claim_outcomes": dict(claim_outcomes.most_common()),
        "failures": dict(failures.most_common()),
        "release_errors": dict(Counter(records["release_errors"]).most_common(5)),
        "socket_closes": records["socket_closes"][:5],
    }


# -- 1 + 2: broadcast and claim latency ----------------------------------------------------------


async def hop_floor(ctx: Context, rate: float, rounds: int = 100) -> dict[str, Any]:
    """Round trips between two generator processes over loopback TCP, paced as the calls
    (idle in between) and back to back: the cost of a hop on this machine, which the proxy
    path pays once more per broadcast (Asterisk -> proxy -> application) and twice more per
    claim (application -> proxy -> Asterisk -> proxy -> application)."""
    port = await ctx.app_workers[0].call("echo_open")
    size = 600  # about a CallBroadcast
    out: dict[str, Any] = {"size": size}
    for name, gap in (("paced", 1 / rate), ("back_to_back", 0.0)):
        rtt = await ctx.originator.call("echo_rtt", port=port, rounds=rounds, gap=gap, size=size)
        out[name] = ms(rtt)
    ctx.log(
        f"  hop floor: loopback round trip p50 {out['paced']['p50']} ms paced at {rate:g}/s, "
        f"{out['back_to_back']['p50']} ms back to back"
    )
    return out


async def latency(
    ctx: Context, app_counts: tuple[int, ...], calls: int, rate: float, warmup: int
) -> dict[str, Any]:
    floor = await hop_floor(ctx, rate)
    rows = []
    for i, apps in enumerate(app_counts):
        for path in PATHS if i % 2 == 0 else PATHS[::-1]:
            racers = min(apps, MAX_RACERS)
            ctx.log(f"  latency: {apps} app(s), {racers} racing, {path}: {calls} calls at {rate}/s")
            row = await run_calls(
                ctx, path, apps=apps, racers=racers, rate=rate, calls=calls, warmup=warmup
            )
            rows.append(row)
            ctx.log(
                f"    broadcast p50/p99 {row['broadcast_ms']['p50']}/{row['broadcast_ms']['p99']}"
                f" ms, claim->StasisStart {row['claim_to_start_ms']['p50']}/"
                f"{row['claim_to_start_ms']['p99']} ms, claimed {row['claimed']}/{row['calls']}"
                + (f" {row['failures']}" if row["failures"] else "")
            )
    return {"rows": rows, "hop_floor": floor}


# -- 3: throughput --------------------------------------------------------------------------------


async def throughput(
    ctx: Context, rates: list[float], step_seconds: float, apps: int = 10, min_calls: int = 30
) -> dict[str, Any]:
    async def step(path: str, rate: float, calls: int) -> dict[str, Any]:
        return await run_calls(ctx, path, apps=apps, racers=apps, rate=rate, calls=calls)

    return await ladder(ctx, list(PATHS), rates, step_seconds, step, apps, min_calls)


Step = Callable[[str, float, int], Awaitable[dict[str, Any]]]


async def ladder(
    ctx: Context,
    paths: list[str],
    rates: list[float],
    step_seconds: float,
    step: Step,
    apps: int = 10,
    min_calls: int = 30,
    backlog_ms: float | None = None,
    go_on: Callable[[dict[str, Any], dict[str, int]], bool] | None = None,
) -> dict[str, Any]:
    """Step the call rate up on every path (which goes first alternating by rate) until its
    first failing step: `step(path, rate, calls)` runs one (`run_calls`). A step passes when
    >= 99.9 % of its calls were claimed within the broadcast timeout, origination kept its
    schedule and no channel was left; with `backlog_ms`, also when no backlog built up
    (origination -> the winner's StasisStart p95 at most that: short steps end before an
    overload costs the timeout). `go_on(row, reasons)`: climb on past a failing step (marked
    `continued`) when it says so; `best` stays the last rate before the first failure."""
    steps: list[dict[str, Any]] = []
    best: dict[str, float | None] = dict.fromkeys(paths)
    broke: dict[str, dict[str, Any] | None] = dict.fromkeys(paths)
    alive = set(paths)
    for i, rate in enumerate(rates):
        for path in paths if i % 2 == 0 else paths[::-1]:
            if path not in alive:
                continue
            calls = max(min_calls, int(rate * step_seconds))
            ctx.log(f"  throughput: {path} {rate:g} calls/s x {calls} calls, {apps} racing apps")
            row = await step(path, rate, calls)
            extra = []
            if row["achieved_rate"] is not None and row["achieved_rate"] < 0.95 * rate:
                extra.append(f"origination fell behind ({row['achieved_rate']}/s)")
            if row["leftover_channels"]:
                extra.append(f"{row['leftover_channels']} channel(s) left after the step")
            e2e = row["end_to_end_ms"]["p95"]
            if backlog_ms is not None and e2e is not None and e2e > backlog_ms:
                extra.append(f"backlog: origination -> StasisStart p95 {e2e / 1000:.2f} s")
            reasons = {**row["failures"], **dict.fromkeys(extra, 0)}
            row["diagnosis"] = diagnose(row)
            ok = (row["claimed_ratio"] or 0) >= 0.999 and not extra
            row["passed"] = ok
            steps.append(row)
            cpu = row["cpu"]
            ctx.log(
                f"    claimed {row['claimed']}/{row['calls']} ({row['claimed_ratio']}), "
                f"broadcast p50 {row['broadcast_ms']['p50']} ms, claim p50 "
                f"{row['claim_to_start_ms']['p50']} ms; cpu gen {cpu['generator_share']:.0%} "
                f"proxy {cpu['proxy_share']:.0%} asterisk {cpu['asterisk_share']:.0%} "
                + (f"redis {cpu['redis_share']:.0%} " if cpu.get("redis_share") else "")
                + f"other {cpu['other_share']:.0%}"
                + ("" if ok else f"  FAILED: {reasons}")
            )
            if ok:
                if broke[path] is None:
                    best[path] = rate
                continue
            row["continued"] = go_on is not None and go_on(row, reasons)
            if not row["continued"]:
                alive.discard(path)
            if broke[path] is None:
                broke[path] = {
                    "rate": rate,
                    "reasons": reasons,
                    "diagnosis": row["diagnosis"],
                    "claim_outcomes": row["claim_outcomes"],
                    "cpu": cpu,
                    "broadcast_ms": row["broadcast_ms"],
                    "claim_to_start_ms": row["claim_to_start_ms"],
                }
        if not alive:
            break
    return {
        "apps": apps,
        "step_seconds": step_seconds,
        "best": best,
        "broke": broke,
        "steps": steps,
    }


def diagnose(row: dict[str, Any]) -> list[str]:
    """Where the time went in a step, from the generator's side of things."""
    notes = []
    wait = row["claim_client_wait_ms"]["p50"]
    if wait is not None and wait > 100:
        notes.append(
            f"claims queued in the load generator before a connection was free (p50 "
            f"{wait / 1000:.1f} s; busiest generator process "
            f"{row['cpu']['generator_busiest_core']:.0%} of a core)"
        )
    broadcast = row["broadcast_ms"]["p50"]
    if broadcast is not None and broadcast > 100:
        notes.append(f"CallBroadcast arrived late (p50 {broadcast / 1000:.1f} s after origination)")
    rtt = row["claim_rtt_ms"]["p50"]
    if rtt is not None and rtt > 100:
        notes.append(f"winning claims slow to be answered (p50 {rtt:.0f} ms on the wire)")
    errors = {k: v for k, v in row["claim_outcomes"].items() if not k.isdigit()}
    if errors:
        notes.append("claim errors: " + ", ".join(f"{k} x{v}" for k, v in errors.items()))
    if row["socket_closes"]:
        notes.append("application sockets closed: " + "; ".join(row["socket_closes"]))
    cpu = row["cpu"]
    parts = ("generator", "proxy", "asterisk", "redis", "other")
    busy = sum(cpu.get(f"{k}_share", 0.0) for k in parts)
    if busy > 0.9:
        notes.append(
            f"all cores busy ({busy:.0%}: generator {cpu['generator_share']:.0%}, proxy "
            f"{cpu['proxy_share']:.0%}, Asterisk {cpu['asterisk_share']:.0%}"
            + (f", Redis {cpu['redis_share']:.0%}" if cpu.get("redis_share") else "")
            + f", other {cpu['other_share']:.0%})"
        )
    replicas = cpu.get("replica_cores")
    if replicas:
        if max(replicas) > 0.9:
            notes.append(f"busiest replica at {max(replicas):.0%} of one core")
    elif row["path"] != "native" and cpu["proxy_core"] > 0.9:
        notes.append(f"proxy at {cpu['proxy_core']:.0%} of one core")
    return notes


# -- 4: pass-through cost and relay ------------------------------------------------------------


async def passthrough(
    ctx: Context, n: int, warmup: int, concurrency: int, duration: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"sequential": {}, "concurrent": {}}
    for endpoint in ("asterisk/info", "channels"):
        urls = [f"{ctx.asterisk.base}/ari/{endpoint}", f"{ctx.proxy.base}/ari/{endpoint}"]
        ctx.log(f"  pass-through: GET /ari/{endpoint} x {n} direct and proxied, interleaved")
        direct, proxied = await ctx.app_workers[0].call(
            "http_sequential", urls=urls, n=n, warmup=warmup
        )
        paired = [p - d for d, p in zip(direct, proxied, strict=True)]
        row = {"direct_ms": ms(direct), "proxied_ms": ms(proxied)}
        row["added_p50_ms"] = round(row["proxied_ms"]["p50"] - row["direct_ms"]["p50"], 3)
        row["added_p99_ms"] = round(row["proxied_ms"]["p99"] - row["direct_ms"]["p99"], 3)
        row["paired_added_p50_ms"] = round(pct(paired, 50) * 1000, 3)  # type: ignore[operator]
        out["sequential"][endpoint] = row
        ctx.log(
            f"    direct p50/p99 {row['direct_ms']['p50']}/{row['direct_ms']['p99']} ms, "
            f"proxied {row['proxied_ms']['p50']}/{row['proxied_ms']['p99']} ms, "
            f"added p50 {row['added_p50_ms']} ms"
        )
        rps_row = {}
        clients = ctx.app_workers[:2]
        for target, url in (("direct", urls[0]), ("proxied", urls[1])):
            meter = CpuMeter(ctx)
            start_at = time.monotonic() + 0.2
            results = await asyncio.gather(
                *(
                    w.call(
                        "http_concurrent",
                        url=url,
                        concurrency=concurrency,
                        duration=duration,
                        start_at=start_at,
                    )
                    for w in clients
                )
            )
            cpu = meter.stop()
            done = sum(r[0] for r in results)
            rps_row[target] = {
                "rps": round(done / duration, 1),
                "errors": sum(r[1] for r in results),
                "clients": concurrency * len(clients),
                "cpu": cpu,
            }
        rps_row["ratio"] = round(rps_row["proxied"]["rps"] / rps_row["direct"]["rps"], 3)
        out["concurrent"][endpoint] = rps_row
        ctx.log(
            f"    {rps_row['direct']['clients']} clients: direct {rps_row['direct']['rps']} req/s,"
            f" proxied {rps_row['proxied']['rps']} req/s"
        )
    return out


async def relay(ctx: Context, iterations: int, loops: int, rounds: int) -> dict[str, Any]:
    """Events delivered per second on one subscribeAll socket, straight from Asterisk and
    through the proxy, while [bench-events] loops make Asterisk publish as fast as it can."""
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "proxied": []}
    worker = ctx.app_workers[0]
    for r in range(rounds):
        for target in ("direct", "proxied") if r % 2 == 0 else ("proxied", "direct"):
            base = ctx.asterisk.base if target == "direct" else ctx.proxy.base
            app = f"{ctx.tag(target)}-relay"
            await worker.call("relay_open", base=base, app=app)
            await ctx.admin.wait_registered([app], via_proxy=target == "proxied")
            meter = CpuMeter(ctx)
            for _ in range(loops):
                await ctx.admin.originate_flood(iterations)
            result = await worker.call("relay_wait", ends=loops, timeout=120)
            result["cpu"] = meter.stop()
            result["rate"] = (
                round(result["events"] / result["seconds"]) if result["seconds"] else None
            )
            runs[target].append(result)
            await ctx.admin.wait_no_channels()
            seconds = "-" if result["seconds"] is None else f"{result['seconds']:.2f}"
            problem = result["error"] or ""
            if result["close_code"] not in (None, 1000):
                problem += f" (socket closed with {result['close_code']})"
            ctx.log(
                f"  relay {target}: {result['events']} events in {seconds} s = "
                f"{result['rate']}/s {problem}"
            )
    summary = mean_rates(runs)
    return {
        "iterations": iterations,
        "loops": loops,
        "runs": runs,
        "events_per_s": summary,
        "ratio": ratio(summary["proxied"], summary["direct"]),
    }


# -- 5: memory ----------------------------------------------------------------------------------


async def memory(
    ctx: Context, first: int, total: int, rate: float, settle: float
) -> dict[str, Any]:
    """Proxy RSS after `first` and after `total` calls (cumulative), each claimed at once by
    the one connected application and released (the proxy's full broadcast path)."""
    proc = psutil.Process(ctx.proxy.pid)
    path = "proxy"
    tag = ctx.tag(path)
    names = [f"{tag}-app0"]
    await _open_apps(ctx, path, names, names)
    rss_start = proc.memory_info().rss
    points = []
    done = 0
    try:
        for target in (first, total):
            count = target - done
            ctx.log(f"  memory: {count} more calls at {rate}/s through the proxy")
            row = await run_calls(
                ctx, path, apps=1, racers=1, rate=rate, calls=count, keep_apps=True, names=names
            )
            done = target
            await asyncio.sleep(settle)  # the proxy's per-call hand-over watchdogs (5 s) end
            rss = proc.memory_info().rss
            points.append(
                {
                    "calls": done,
                    "rss_mb": round(rss / 2**20, 1),
                    "claimed": row["claimed"],
                    "of": row["calls"],
                    "achieved_rate": row["achieved_rate"],
                    "proxy_cpu_ms_per_call": round(
                        row["cpu"]["proxy_cpu_s"] * 1000 / max(1, row["calls"]), 3
                    ),
                    "cpu": row["cpu"],
                }
            )
            ctx.log(
                f"    after {done} calls: RSS {points[-1]['rss_mb']} MB "
                f"(claimed {row['claimed']}/{row['calls']})"
            )
    finally:
        await _close_apps(ctx)
    growth = (points[-1]["rss_mb"] - points[0]["rss_mb"]) / points[0]["rss_mb"]
    return {
        "rate": rate,
        "rss_start_mb": round(rss_start / 2**20, 1),
        "points": points,
        "growth": round(growth, 4),
    }

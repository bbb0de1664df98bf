"""bench/run: native StasisBroadcast vs ari-broadcast-proxy on one real Asterisk.

    bench/run                 full run (about 10 minutes on 2 cores)
    bench/run --quick         small run for smoke-testing (under 2 minutes)
    bench/run --only latency,passthrough
    bench/run --json /tmp/x.json

Sections: latency (broadcast and claim latency with 1/10/50 applications), throughput,
claims (CPU and round trip of a losing claim, over HTTP and REST over WebSocket),
passthrough (REST cost), relay (events/s), memory (proxy RSS after 1k and 10k calls),
replicas (1, 2 and 3 replicas sharing a redis-server against one proxy without Redis:
throughput, claim latency, Redis operations per call; 1.5-3 minutes, quick under 40 s),
fleet (the proxy over three Asterisk servers, two more sandbox instances started for it:
routing cost per REST call with 1 and 3 servers, events relayed from 3 servers' floods).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from . import charts, claims, fleet, replicas, report, sections
from .stack import ROOT, Admin, AsteriskInstance, ProxyInstance
from .workers import WorkerHandle

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = (
    "latency",
    "throughput",
    "claims",
    "passthrough",
    "relay",
    "memory",
    "replicas",
    "fleet",
)
ALIASES = {
    "broadcast": "latency",
    "claim": "latency",
    "rss": "memory",
    "losers": "claims",
    "events": "relay",
    "cluster": "replicas",
    "redis": "replicas",
    "servers": "fleet",
    "upstreams": "fleet",
}
RUNNERS = {
    "latency": sections.latency,
    "throughput": sections.throughput,
    "claims": claims.claims,
    "passthrough": sections.passthrough,
    "relay": sections.relay,
    "memory": sections.memory,
    "replicas": replicas.replicas,
    "fleet": fleet.fleet,
}
# Applications are spread over this many processes (app i in process i mod 5): two racing
# applications per event loop and connection pool, so a claim rarely waits behind another
# application's, without paying for ten event loops on two cores.
APP_WORKERS = 5

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "latency": {"app_counts": (1, 10, 50), "calls": 100, "rate": 20, "warmup": 5},
        "throughput": {
            "rates": [5, 10, 20, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960],
            "step_seconds": 10,
        },
        "claims": {"n": 3000, "warmup": 200, "concurrency": 10},
        "passthrough": {"n": 1000, "warmup": 50, "concurrency": 4, "duration": 3},
        "relay": {"iterations": 10000, "loops": 2, "rounds": 2},
        "memory": {"first": 1000, "total": 10000, "rate": 100, "settle": 6},
        "replicas": {
            "counts": (1, 2, 3),
            "rates": [60, 120, 240, 360, 480, 640],
            "step_seconds": 3,
            "latency_calls": 100,
            "latency_rate": 20,
            "warmup": 5,
            "idle_seconds": 2,
        },
        "fleet": {"n": 1000, "warmup": 50, "iterations": 10000, "loops": 2, "rounds": 2},
    },
    "quick": {
        "latency": {"app_counts": (1, 10, 50), "calls": 20, "rate": 20, "warmup": 2},
        "throughput": {"rates": [10, 40], "step_seconds": 3},
        "claims": {"n": 500, "warmup": 50, "concurrency": 10},
        "passthrough": {"n": 200, "warmup": 20, "concurrency": 4, "duration": 1},
        "relay": {"iterations": 3000, "loops": 1, "rounds": 1},
        "memory": {"first": 200, "total": 1000, "rate": 100, "settle": 6},
        "replicas": {
            "counts": (1, 2, 3),
            "rates": [40, 160],
            "step_seconds": 1.5,
            "latency_calls": 30,
            "latency_rate": 30,
            "warmup": 3,
            "idle_seconds": 1,
        },
        "fleet": {"n": 200, "warmup": 20, "iterations": 3000, "loops": 1, "rounds": 1},
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small run for smoke-testing")
    parser.add_argument(
        "--only", metavar="SECTION[,SECTION]", help=f"run only these: {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        type=Path,
        default=RESULTS / "latest.json",
        help="where the results go (default bench/results/latest.json)",
    )
    parser.add_argument(
        "--mem-calls",
        type=int,
        metavar="N",
        help="calls for the memory section's last point (default 10000, quick 1000)",
    )
    parser.add_argument(
        "--mem-rate", type=float, metavar="CPS", help="memory section's call rate (default 100/s)"
    )
    parser.add_argument(
        "--proxy-python",
        metavar="PATH",
        help="run the proxy on this interpreter (a venv's python with the project installed)",
    )
    parser.add_argument("--name", default="bench", help="sandbox instance name (default bench)")
    args = parser.parse_args(argv)
    chosen = []
    for raw in (args.only or ",".join(SECTIONS)).split(","):
        item = ALIASES.get(raw.strip(), raw.strip())
        if item not in SECTIONS:
            parser.error(f"unknown section {item!r} (choose from {', '.join(SECTIONS)})")
        if item not in chosen:
            chosen.append(item)
    args.sections = [s for s in SECTIONS if s in chosen]
    args.profile = "quick" if args.quick else "full"
    return args


def revision() -> str:
    """The proxy's commit, and whether its code differs from it (read-only git)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "ari_broadcast_proxy")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + (" + uncommitted changes in ari_broadcast_proxy/" if dirty else "")


def python_version(python: str) -> str:
    code = "import platform; print(platform.python_version())"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


async def measure(
    args: argparse.Namespace, ctx: sections.Context
) -> tuple[dict[str, Any], dict[str, float]]:
    # One thread per worker call in flight (WorkerHandle.call waits on its pipe in a thread).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
    profile = PROFILES[args.profile]
    out: dict[str, Any] = {}
    meter = sections.CpuMeter(ctx)
    try:
        for name in args.sections:
            ctx.log(f"[{name}]")
            started = time.monotonic()
            params = dict(profile[name])
            if name == "memory":
                if args.mem_calls:
                    params["total"] = args.mem_calls
                    params["first"] = min(params["first"], args.mem_calls)
                if args.mem_rate:
                    params["rate"] = args.mem_rate
            out[name] = await RUNNERS[name](ctx, **params)
            out[name]["params"] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in params.items()
            }
            out[name]["seconds"] = round(time.monotonic() - started, 1)
        return out, meter.stop()
    finally:
        try:
            await ctx.admin.set_native_modules(True)  # leave Asterisk as it came up
        finally:
            await ctx.admin.aclose()


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    if args.proxy_python:
        ProxyInstance.python = args.proxy_python
    asterisk = AsteriskInstance(args.name)
    proxy: ProxyInstance | None = None
    workers: list[WorkerHandle] = []
    try:
        print(f"starting Asterisk sandbox {args.name!r} and the proxy...", flush=True)
        asterisk.up()
        proxy = ProxyInstance(asterisk.base, RESULTS / "proxy.log")
        workers = [WorkerHandle(f"bench-apps-{i}") for i in range(APP_WORKERS)]
        workers.append(WorkerHandle("bench-originator"))
        proxy.wait_ready()
        ctx = sections.Context(
            asterisk=asterisk,
            proxy=proxy,
            admin=Admin(asterisk.base, proxy.base),
            app_workers=workers[:APP_WORKERS],
            originator=workers[APP_WORKERS],
            log=lambda *a: print(*a, flush=True),
        )
        results, cpu = asyncio.run(measure(args, ctx))
        log_text = proxy.log_path.read_text(errors="replace")
        return {
            "meta": {
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "mode": args.profile,
                "sections": args.sections,
                "machine": machine(),
                "proxy_python": python_version(ProxyInstance.python),
                "asterisk": asterisk.version().split(":", 1)[-1].split("+", 1)[0],
                "proxy_revision": revision(),
                "generator": {"processes": len(workers)},
                "cpu": cpu,
                "proxy_log": {
                    "warnings": log_text.count(" WARNING "),
                    "errors": log_text.count(" ERROR "),
                },
                "total_seconds": round(time.monotonic() - started, 1),
            },
            "results": results,
        }
    finally:
        for worker in workers:
            worker.stop()
        if proxy is not None:
            proxy.stop()
        asterisk.down()


_terminating: list[int] = []


def _terminate(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP take Ctrl-C's path (asyncio.run cancels the measurement, then the
    finally blocks stop the workers, the proxy and Asterisk)."""
    if not _terminating:
        _terminating.append(signum)
        os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Even when started in the background with SIGINT ignored (as shells do without job
    # control), Ctrl-C/SIGINT and SIGTERM stop the run in order.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        data = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: Asterisk, the proxy and the workers were stopped", file=sys.stderr)
        return 130
    data["meta"]["total_seconds"] = round(data["meta"]["total_seconds"], 1)
    text = report.render(data)
    print()
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1, default=str) + "\n")
    (args.json.parent / (args.json.stem + ".md")).write_text(text + "\n")
    print(f"\nresults: {os.path.relpath(args.json)}")
    for chart in charts.draw(data, args.json.parent, args.json.stem):
        print(f"chart: {os.path.relpath(chart)}")
    return 0

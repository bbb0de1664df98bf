"""Smoke test of the benchmark (bench/): two small sections, the pass-through cost and the
replicas (the session's proxy without Redis, then two replicas sharing a redis-server),
against the session's Asterisk and proxy, through the benchmark's own worker processes; and
the call analysis and the report on the numbers they produce. It checks that numbers come
out, never how good they are (bench/run is where performance is judged)."""

from __future__ import annotations

import contextlib
import os
import types
from pathlib import Path

import psutil
import pytest

from bench import cli, replicas, report, sections
from bench.stack import Admin, AsteriskInstance
from bench.workers import WorkerHandle

from ..ari import Asterisk
from ..conftest import ProxyProcess
from ..redis_server import REDIS_SERVER


async def test_passthrough_section_produces_numbers(
    asterisk: Asterisk, proxy: ProxyProcess
) -> None:
    workers = [WorkerHandle(f"bench-smoke-{i}") for i in range(3)]
    admin = Admin(asterisk.base, proxy.base)
    try:
        ctx = sections.Context(
            asterisk=AsteriskInstance(asterisk.name, asterisk.port, managed=False),
            proxy=types.SimpleNamespace(base=proxy.base, pid=proxy.process.pid),  # type: ignore[arg-type]
            admin=admin,
            app_workers=workers[:2],
            originator=workers[2],
            log=lambda *_: None,
        )
        result = await sections.passthrough(ctx, n=30, warmup=5, concurrency=2, duration=0.5)
        floor = await sections.hop_floor(ctx, rate=200, rounds=5)
    finally:
        await admin.aclose()
        for worker in workers:
            worker.stop()
    for endpoint in ("asterisk/info", "channels"):
        row = result["sequential"][endpoint]
        assert row["direct_ms"]["n"] == row["proxied_ms"]["n"] == 30
        assert row["direct_ms"]["p50"] > 0
        assert row["proxied_ms"]["p50"] > 0
        assert isinstance(row["added_p50_ms"], float)
        concurrent = result["concurrent"][endpoint]
        assert concurrent["direct"]["rps"] > 0
        assert concurrent["proxied"]["rps"] > 0
        assert concurrent["direct"]["errors"] == concurrent["proxied"]["errors"] == 0
    assert floor["paced"]["n"] == floor["back_to_back"]["n"] == 5
    assert floor["paced"]["p50"] > 0
    latency = {"rows": [], "hop_floor": floor}
    text = report.render({"meta": _meta(3), "results": {"passthrough": result, "latency": latency}})
    assert "GET /ari/channels" in text
    assert "pass-through added p50" in text
    assert f"p50 {floor['paced']['p50']:.3f} ms" in text


def _ours_left() -> list[str]:
    """Child processes of this one that are redis-server or a replica."""
    left = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            if "redis-server" in child.name() or "--cluster-url" in command:
                left.append(" ".join(command))
    return left


def _meta(processes: int) -> dict[str, object]:
    return {
        "date": "now",
        "mode": "smoke",
        "machine": cli.machine(),
        "asterisk": "22",
        "generator": {"processes": processes},
        "cpu": dict.fromkeys(
            ("wall_s", "generator_share", "proxy_share", "asterisk_share", "other_share"), 0.0
        ),
        "total_seconds": 1.0,
    }


@pytest.mark.skipif(not os.access(REDIS_SERVER, os.X_OK), reason="no redis-server")
async def test_replicas_section_produces_numbers(
    asterisk: Asterisk, proxy: ProxyProcess, tmp_path: Path
) -> None:
    """The section in small: the baseline and two replicas, a few calls each (the session's
    dialplan runs the drop-in subroutine in [soak-proxy], from BCAST_DATA); redis-server and
    the replicas are gone afterwards."""
    workers = [WorkerHandle(f"bench-smoke-r{i}") for i in range(3)]
    admin = Admin(asterisk.base, proxy.base)
    ctx = sections.Context(
        asterisk=AsteriskInstance(asterisk.name, asterisk.port, managed=False),
        proxy=types.SimpleNamespace(  # type: ignore[arg-type]
            base=proxy.base, pid=proxy.process.pid, log_path=tmp_path / "proxy.log"
        ),
        admin=admin,
        app_workers=workers[:2],
        originator=workers[2],
        log=lambda *_: None,
    )
    try:
        result = await replicas.replicas(
            ctx,
            counts=(2,),
            rates=[20],
            step_seconds=1,
            latency_calls=10,
            latency_rate=20,
            warmup=2,
            idle_seconds=0.5,
            apps=4,
            min_calls=10,
            context="soak-proxy",
            data_variable="BCAST_DATA",
        )
    finally:
        try:
            await admin.set_native_modules(True)
        finally:
            await admin.aclose()
            for worker in workers:
                worker.stop()
    assert not _ours_left(), _ours_left()
    assert ctx.extra_pids == {"redis": [], "proxy": []}
    assert [s["replicas"] for s in result["setups"]] == [0, 2]
    for setup in result["setups"]:
        latency = setup["latency"]
        assert latency["calls"] == 10
        assert latency["claimed"] > 0
        assert latency["claim_answer_ms"]["p50"] > 0
        assert setup["throughput"]["steps"]
    cluster = result["setups"][1]
    assert cluster["idle_ops_per_s"] > 0
    assert cluster["latency"]["redis_ops"]["per_call_raw"] > 0
    assert cluster["latency"]["redis_ops"]["scripts_per_call"] > 0
    assert "redis_ops" not in result["setups"][0]["latency"]
    assert [row["setup"] for row in result["summary"]] == [s["setup"] for s in result["setups"]]
    text = report.render({"meta": _meta(3), "results": {"replicas": result}})
    assert "### 6. Replicas sharing Redis" in text
    assert "2 replicas + Redis" in text


def test_call_analysis_counts_claims_and_failures() -> None:
    calls = [("c-1-b", 10.0, 10.01, 200, ""), ("c-2-b", 11.0, 11.01, 200, "")]
    records = {
        "broadcasts": [("c-1-b", "a0", 10.005), ("c-1-b", "a1", 10.006), ("c-2-b", "a0", 11.004)],
        "claims": [
            ("c-1-b", "a0", 10.005, 10.006, 10.008, 204, ""),
            ("c-1-b", "a1", 10.006, 10.007, 10.009, 409, ""),
            ("c-2-b", "a0", 11.004, 11.005, 11.2, 0, "RemoteProtocolError: Server disconnected"),
        ],
        "starts": [("c-1-b", "a0", 10.009)],
        "release_errors": [],
        "socket_closes": [],
    }
    out = sections.analyze(calls, records, racers=2)
    assert out["calls"] == 2
    assert out["claimed"] == 1
    assert out["broadcast_ms"]["n"] == 3
    assert out["claim_to_start_ms"]["p50"] == 3.0
    assert list(out["failures"]) == ["no claim won: RemoteProtocolError: Server disconnected x1"]

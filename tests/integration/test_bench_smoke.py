"""Smoke test of the benchmark (bench/): one small section, the pass-through cost, against
the session's Asterisk and proxy, through the benchmark's own worker processes; and the
call analysis and the report on the numbers it produces. It checks that numbers come out,
never how good they are (bench/run is where performance is judged)."""

from __future__ import annotations

import types

from bench import cli, report, sections
from bench.stack import Admin, AsteriskInstance
from bench.workers import WorkerHandle

from ..ari import Asterisk
from ..conftest import ProxyProcess


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
    meta = {
        "date": "now",
        "mode": "smoke",
        "machine": cli.machine(),
        "asterisk": "22",
        "generator": {"processes": 3},
        "cpu": dict.fromkeys(
            ("wall_s", "generator_share", "proxy_share", "asterisk_share", "other_share"), 0.0
        ),
        "total_seconds": 1.0,
    }
    latency = {"rows": [], "hop_floor": floor}
    text = report.render({"meta": meta, "results": {"passthrough": result, "latency": latency}})
    assert "GET /ari/channels" in text
    assert "pass-through added p50" in text
    assert f"p50 {floor['paced']['p50']:.3f} ms" in text


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

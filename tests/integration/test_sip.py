"""Real SIP callers: sipp authenticates as `alice` (digest) and places calls through PJSIP into
[from-sip] -> [broadcast-via-proxy] (Answer(), then the broadcast through the proxy) while
four applications race for every call over the proxy, two claiming over HTTP and two over
REST-over-WebSocket. Every call is answered (sipp saw the 200 OK), won exactly once (one 204
per channel, one StasisStart, for the winner), released (the winner `continue`s it, the
dialplan hangs up, sipp answers the BYE) and nothing is left.

The scenario is tests/sip/uac_digest.xml. SIP_CALLS (default 300), SIP_RATE (calls/s,
default 20) and SIP_LIMIT (sipp's cap on calls at once, default 50) size it; each winner holds
its call for HOLD seconds before releasing it. Answer() itself waits 0.5 s for a first voice
frame that sipp never sends, so about RATE x (HOLD + 0.5) calls are up at once (30 here)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ..ari import PASSWORD, ROOT, USER, Ari, Asterisk, Tasks, events, free_port, send_claim
from ..conftest import ProxyProcess

CALLS = int(os.environ.get("SIP_CALLS", "300"))
RATE = float(os.environ.get("SIP_RATE", "20"))
LIMIT = int(os.environ.get("SIP_LIMIT", "50"))
HOLD = 1.0  # seconds a winner keeps its call before `continue`
APPS = [f"sip-racer-{i}" for i in range(4)]
WS_CLAIMERS = set(APPS[::2])  # these claim over REST-over-WebSocket, the others over HTTP
SCENARIO = ROOT / "tests" / "sip" / "uac_digest.xml"
SIPP_TIMEOUT = 30 + CALLS / RATE * 3  # sipp's own global cap, seconds


def sipp_binary() -> str:
    sipp = shutil.which("sipp")
    if sipp is None:
        pytest.fail(
            "sipp is not installed: this test places real SIP calls with it. Install the Debian "
            "package sip-tester (scripts/test does).",
            pytrace=False,
        )
    return sipp


def sipp_command(sipp: str, sip_port: int, tmp: Path) -> list[str]:
    local = free_port(1)
    media = free_port(4)  # sipp binds its RTP echo port and that port + 2
    control = free_port(1)
    return [
        sipp,
        f"127.0.0.1:{sip_port}",
        "-sf", str(SCENARIO),
        "-t", "u1",
        "-i", "127.0.0.1",
        "-mi", "127.0.0.1",
        "-p", str(local),
        "-mp", str(media),
        "-ci", "127.0.0.1",
        "-cp", str(control),
        "-m", str(CALLS),
        "-r", f"{RATE:g}",
        "-l", str(LIMIT),
        "-timeout", f"{SIPP_TIMEOUT:.0f}s",
        "-timeout_error",
        "-recv_timeout", "20000",
        "-nostdin",
        "-trace_stat", "-stf", str(tmp / "sipp_stats.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(tmp / "sipp_errors.log"),
        "-trace_screen", "-screen_file", str(tmp / "sipp_screen.log"),
    ]  # fmt: skip


def read_stats(path: Path) -> tuple[dict[str, str], int]:
    """The final row of sipp's -trace_stat CSV (one row a second, the last when it exits) and
    the most calls it had open at once in any of those rows."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert rows, f"sipp wrote no statistics to {path}"
    peak = max(int(row["CurrentCall"]) for row in rows)
    return {key.strip(): (value or "").strip() for key, value in rows[-1].items() if key}, peak


def lookup_hint(asterisk: Asterisk, log_start: int) -> str:
    """Why SIP calls stall where Asterisk cannot resolve its own hostname locally."""
    failed = asterisk.messages()[log_start:].count("Unable to lookup")
    if not failed:
        return ""
    return (
        f"\nAsterisk logged {failed} failed host lookups during the calls. Each SIP call's RTCP "
        "set-up (res_rtp_asterisk: RTP bound to 0.0.0.0 -> ast_find_ourip) resolves this "
        "machine's hostname, then A.ROOT-SERVERS.NET; where the hostname is not in the "
        "Asterisk host's /etc/hosts that goes to DNS, and a slow resolver stalls PJSIP for "
        "seconds (sipp then sees late or repeated responses)."
    )


@pytest.mark.timeout(120 + int(SIPP_TIMEOUT))
async def test_sip_callers_race(
    asterisk: Asterisk, ari: Ari, proxy: ProxyProcess, tmp_path: Path
) -> None:
    sipp = sipp_binary()
    sip_port = asterisk.port + 2  # scripts/asterisk-sandbox's default: ARI port + 2
    transport = asterisk.cli("pjsip show transport transport-udp")
    assert f"127.0.0.1:{sip_port}" in transport, transport
    # Globals are read from the shipped extensions.conf; the proxy fixture runs the default
    # --broadcast-app, `broadcast`.
    assert await ari.global_var("ARI_BROADCAST_APP") == "broadcast"
    await ari.set_native_modules(False)  # a stock Asterisk: the proxy alone broadcasts
    log_start = len(asterisk.messages())

    offers: dict[str, Counter[str]] = defaultdict(Counter)  # channel -> app -> CallBroadcasts
    extens: dict[str, str] = {}  # channel -> the extension sipp dialled
    callers: Counter[str] = Counter()
    claims: dict[str, list[tuple[str, int]]] = defaultdict(list)  # channel -> (app, status)
    starts: dict[str, list[str]] = defaultdict(list)  # channel -> apps that got StasisStart
    start_args: dict[str, list[str]] = {}
    start_states: Counter[str] = Counter()
    continues: dict[str, int] = {}
    ends: Counter[str] = Counter()
    progress = asyncio.Condition()
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    try:
        async with (
            contextlib.AsyncExitStack() as stack,
            httpx.AsyncClient(
                base_url=proxy.base + "/ari/", auth=(USER, PASSWORD), limits=limits, timeout=30
            ) as http,
        ):
            sockets = [await stack.enter_async_context(events(proxy.base, app)) for app in APPS]
            tasks = Tasks()
            stack.push_async_callback(tasks.cancel_all)  # runs first: sockets are still open
            spawn = tasks.spawn

            async def record(done: Any) -> None:
                async with progress:
                    done()
                    progress.notify_all()

            async def claim(channel_id: str, app: str, socket: Any) -> None:
                status = await send_claim(http, socket, channel_id, app, ws=app in WS_CLAIMERS)
                if status is not None:  # 0: no answer at all, fails the run below
                    await record(lambda: claims[channel_id].append((app, status)))

            async def release(channel_id: str) -> None:
                await asyncio.sleep(HOLD)
                try:
                    status = (await http.post(f"channels/{channel_id}/continue")).status_code
                except httpx.HTTPError:
                    status = 0
                await record(lambda: continues.__setitem__(channel_id, status))

            async def app_loop(app: str, client: Any) -> None:
                async for frame in client.socket:
                    event = orjson.loads(frame)
                    kind = event["type"]
                    channel = event.get("channel") or {}
                    if kind == "CallBroadcast":
                        offers[channel["id"]][app] += 1
                        extens[channel["id"]] = channel["dialplan"]["exten"]
                        callers[f"{event['caller']} {channel['name'].split('-')[0]}"] += 1
                        spawn(claim(channel["id"], app, client.socket))
                    elif kind == "RESTResponse":
                        status = event["status_code"]
                        await record(
                            lambda e=event, s=status: claims[e["transaction_id"]].append((app, s))
                        )
                    elif kind == "StasisStart":
                        starts[channel["id"]].append(app)
                        start_args[channel["id"]] = event["args"]
                        start_states[channel["state"]] += 1
                        spawn(release(channel["id"]))
                    elif kind == "StasisEnd":
                        await record(lambda c=channel["id"]: ends.update([c]))

            for client in sockets:
                client._reader.cancel()  # this test reads the sockets itself
            for app, client in zip(APPS, sockets, strict=True):
                spawn(app_loop(app, client))

            started = time.monotonic()
            with (tmp_path / "sipp_stdout.log").open("wb") as sipp_log:
                process = await asyncio.create_subprocess_exec(
                    *sipp_command(sipp, sip_port, tmp_path),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=sipp_log,
                    stderr=asyncio.subprocess.STDOUT,
                    cwd=tmp_path,
                )
            try:
                async with asyncio.timeout(SIPP_TIMEOUT + 30):
                    sipp_status = await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            elapsed = time.monotonic() - started

            # sipp is done; the last claims' answers and StasisEnds may still be on their way.
            def settled() -> bool:
                return (
                    sum(map(len, claims.values())) >= len(offers) * len(APPS)
                    and len(continues) >= len(starts)
                    and len(ends) >= len(starts)
                )

            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30), progress:
                    await progress.wait_for(settled)
            deadline = time.monotonic() + 15  # then Asterisk destroys the channels
            while time.monotonic() < deadline and (await ari.http.get("channels")).json():  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # polling: ARI has no "all channels gone" event
            left_channels = (await ari.http.get("channels")).json()
            left_broadcast = (await ari.http.get("applications/broadcast")).json()["channel_ids"]
    finally:
        await ari.set_native_modules(True)

    stats, peak = read_stats(tmp_path / "sipp_stats.csv")
    errors = tmp_path / "sipp_errors.log"
    error_text = errors.read_text(errors="replace")[-3000:] if errors.exists() else ""
    screen = tmp_path / "sipp_screen.log"
    winners = Counter(sum(s == 204 for _, s in c) for c in claims.values())
    statuses = Counter(s for c in claims.values() for _, s in c)
    won_by = Counter(app for c in claims.values() for app, s in c if s == 204)
    print(
        f"\nsip: {CALLS} calls from sipp as alice (digest auth) at {RATE:g}/s (at most {LIMIT} "
        f"at once, winners hold {HOLD:g} s) in {elapsed:.1f} s, up to {peak} at once; "
        f"sipp exit {sipp_status}, "
        f"successful {stats.get('SuccessfulCall(C)')}, failed {stats.get('FailedCall(C)')}, "
        f"rate {stats.get('CallRate(C)')}/s, "
        f"INVITE->200 avg {stats.get('ResponseTime1(C)')}, ACK->BYE avg "
        f"{stats.get('ResponseTime2(C)')}, call length avg {stats.get('CallLength(C)')}; "
        f"channels broadcast {len(offers)}, claims {sum(statuses.values())} {dict(statuses)}, "
        f"winners per call {dict(winners)}, wins per app {dict(won_by)}, StasisStart "
        f"{sum(map(len, starts.values()))} (states {dict(start_states)}), continue "
        f"{dict(Counter(continues.values()))}, StasisEnd {sum(ends.values())}, left: channels "
        f"{len(left_channels)}, broadcast {len(left_broadcast)}"
    )
    hint = lookup_hint(asterisk, log_start)
    assert sipp_status == 0, (
        f"sipp exited {sipp_status}\n{error_text}\n"
        f"{screen.read_text(errors='replace')[-3000:] if screen.exists() else ''}{hint}"
    )
    # Every call answered: sipp counts a call successful only past the 200 OK, its ACK, the
    # BYE and sipp's 200 to it.
    assert stats["SuccessfulCall(C)"] == str(CALLS) and stats["FailedCall(C)"] == "0", (
        f"{stats}{hint}"
    )
    # Every call was broadcast once to each racing application, from alice over PJSIP, and
    # each SIP call (extension 90<sipp call number>) is one channel.
    assert len(offers) == CALLS
    assert all(c == dict.fromkeys(APPS, 1) for c in offers.values()), "one offer per app"
    assert sorted(extens.values()) == sorted(f"90{n}" for n in range(1, CALLS + 1))
    assert callers == {"alice PJSIP/alice": CALLS * len(APPS)}
    # Won exactly once: one 204 per channel; the losers get 409 (or 404 once it is over).
    assert winners == {1: CALLS}, "exactly one 204 per call"
    assert all(len(c) == len(APPS) for c in claims.values()), "every claim answered"
    assert set(statuses) <= {204, 409, 404}, statuses
    # One StasisStart per call, in the application whose claim won, with native's args
    # (StasisBroadcast(5000,,${EXTEN}): args = [EXTEN]) on an answered channel.
    winner_of = {ch: next(app for app, s in c if s == 204) for ch, c in claims.items()}
    assert {ch: apps for ch, apps in starts.items()} == {ch: [a] for ch, a in winner_of.items()}
    assert start_args == {ch: [extens[ch]] for ch in starts}
    assert start_states == {"Up": CALLS}
    # Released: every winner's continue accepted, its Stasis session over.
    assert continues == dict.fromkeys(starts, 204)
    assert ends == Counter(dict.fromkeys(starts, 1))
    # Nothing left.
    assert left_broadcast == []
    assert left_channels == []

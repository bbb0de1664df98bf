"""The command line as operators use it: exit status 2 with one line for a bad setting,
--help documents every flag, JSON logs carry the channel id of every broadcast line."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import ari_broadcast_proxy

from ..ari import Ari, Asterisk, events, token
from ..conftest import ProxyProcess


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ari_broadcast_proxy", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_help_documents_every_flag_and_the_environment() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for flag in ("--upstream", "--username", "--password", "--listen", "--broadcast-app"):
        assert flag in out.stdout
    assert "ARI_PROXY_" in out.stdout


def test_version_is_the_packages() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"ari-broadcast-proxy {version('ari-broadcast-proxy')}"
    assert version("ari-broadcast-proxy") == ari_broadcast_proxy.__version__


def test_bad_setting_is_one_line_and_status_2() -> None:
    out = run_cli("--upstream", "nope://", "--username", "u", "--password", "p")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "--upstream" in out.stderr


def test_port_in_use_is_one_line_and_status_2(asterisk: Asterisk) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli(
            "--upstream",
            asterisk.base,
            "--username",
            "u",
            "--password",
            "p",
            "--listen",
            f"127.0.0.1:{port}",
        )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "--listen" in out.stderr and "in use" in out.stderr


async def test_json_logs_carry_the_channel_id(asterisk: Asterisk, ari: Ari, tmp_path: Path) -> None:
    proxy = ProxyProcess(
        asterisk, tmp_path / "json.log", "--log-json", "--broadcast-app", "jsoncast"
    )
    await ari.set_native_modules(False)
    try:
        async with events(proxy.base, "json-app") as client:
            await asyncio.sleep(0.1)
            tag = token()
            await ari.originate(
                "Local/s@conformance-proxy",
                variables={
                    "__BCAST_DATA": "300,[broken",
                    "__BCAST_TOKEN": tag,
                    "__ARI_BROADCAST_APP": "jsoncast",
                },
            )
            offer = await client.wait_for("CallBroadcast")
            assert await ari.wait_global(f"BCAST_RESULT_{tag}") == "TIMEOUT"
    finally:
        await ari.set_native_modules(True)
        proxy.stop()
    lines = [json.loads(line) for line in proxy.log().splitlines() if line.strip()]
    channel_id = offer["channel"]["id"]
    mine = [entry for entry in lines if entry.get("channel_id") == channel_id]
    assert {entry["level"] for entry in mine} >= {"info", "warning"}
    assert any("offered to 1 application" in entry["message"] for entry in mine)
    assert any("not claimed within timeout" in entry["message"] for entry in mine)
    assert any("invalid regex" in entry["message"] for entry in mine)

"""Real ARI client libraries, unmodified, through the proxy: they load the api-docs from it
(so their basePath must point at the proxy), generate the claim operation from events.json,
open the events socket, and know the CallBroadcast/CallClaimed event models.

- Node.js `ari-client` 2.2 (tests/node, installed with `npm ci`): it looks up the model of
  every event it receives and throws on an unknown one.
- Python `asyncari` (the `test` extra): it builds operations from nicknames and converts event
  fields to objects from the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import asyncari
import pytest
from asyncari.model import Channel

from ..ari import PASSWORD, ROOT, USER, Ari, token
from ..conftest import ProxyProcess

NODE_DIR = ROOT / "tests" / "node"
Message = dict[str, Any]

pytestmark = [
    # asyncari logs through the deprecated Logger.warn ("Event not recognized" for events its
    # Channel objects do not handle, "Cannot find event model" for unknown event types: the
    # tests look for the latter in the log records instead).
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
    # asyncari never closes the anyio memory streams of its listeners.
    pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning"),
]


@pytest.fixture
def asyncari_leftovers() -> Iterator[None]:
    """Collect asyncari's unclosed streams now, under this module's filters, not in a later test."""
    yield
    gc.collect()


# -- Node.js ari-client -------------------------------------------------------------------------


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Node.js is not installed: these tests run the npm ari-client. Install nodejs and "
            "npm, then run `npm ci` in tests/node (scripts/test does both).",
            pytrace=False,
        )
    if not (NODE_DIR / "node_modules" / "ari-client" / "package.json").is_file():
        pytest.fail(
            "tests/node/node_modules/ari-client is missing: run `npm ci` in tests/node "
            "(scripts/test does).",
            pytrace=False,
        )
    return [node, str(NODE_DIR / "ari_client_check.js")]


class NodeApp:
    """The node script's JSON lines, recorded as they arrive."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.messages: list[Message] = []
        self.stderr = b""
        self.ended = False
        self._arrived = asyncio.Condition()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._errors())]

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue  # swagger-client prints deprecation notices on stdout
            if isinstance(message, dict) and "kind" in message:
                async with self._arrived:
                    self.messages.append(message)
                    self._arrived.notify_all()
        async with self._arrived:
            self.ended = True
            self._arrived.notify_all()

    async def _errors(self) -> None:
        assert self.process.stderr is not None
        self.stderr = await self.process.stderr.read()

    def _errors_reported(self) -> list[Message]:
        return [m for m in self.messages if m["kind"] == "error"]

    def _explain(self, what: str) -> str:
        lines = "\n".join(json.dumps(m) for m in self.messages[-30:])
        return (
            f"{what}\n--- ari-client said ---\n{lines}\n"
            f"--- stderr ---\n{self.stderr.decode(errors='replace')[-3000:]}"
        )

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 10) -> Message:
        def settled() -> bool:
            return self.ended or bool(self._errors_reported()) or any(map(predicate, self.messages))

        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(settled)
        except TimeoutError:
            pytest.fail(self._explain(f"nothing matching after {timeout}s"), pytrace=False)
        if errors := self._errors_reported():
            pytest.fail(self._explain(f"ari-client failed: {errors[0]['message']}"), pytrace=False)
        match = next((m for m in self.messages if predicate(m)), None)
        if match is None:
            await self.process.wait()
            pytest.fail(self._explain(f"node exited with {self.process.returncode}"), pytrace=False)
        return match

    def event(self, kind: str, channel_id: str) -> Callable[[Message], bool]:
        return lambda m: m["kind"] == "event" and m["type"] == kind and m["channel"] == channel_id


@contextlib.asynccontextmanager
async def node_app(base: str, app: str) -> AsyncIterator[NodeApp]:
    process = await asyncio.create_subprocess_exec(
        *node_command(),
        base,
        USER,
        PASSWORD,
        app,
        cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = NodeApp(process)
    try:
        connected = await client.wait_for(lambda m: m["kind"] == "connected", timeout=20)
        assert connected["claimChannel"] == "function"
        await client.wait_for(lambda m: m["kind"] == "started")
        yield client
        assert not client._errors_reported(), client._explain("ari-client failed")
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the script stops its client and exits
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        await asyncio.gather(*client._tasks, return_exceptions=True)
    assert process.returncode == 0, client._explain(f"node exited with {process.returncode}")


async def test_node_ari_client_receives_stasis_start(ari: Ari, proxy: ProxyProcess) -> None:
    app = f"node-{token()}"
    async with node_app(proxy.base, app) as client:
        channel = await ari.originate("Local/s@tests-echo", app=app, appArgs="a,b")
        start = await client.wait_for(client.event("StasisStart", channel["id"]))
        assert start["application"] == app
        assert start["args"] == ["a", "b"]
        assert start["resource"] == channel["id"]  # ari-client built a Channel from the model
        assert (await ari.http.delete(f"channels/{channel['id']}")).status_code == 204
        await client.wait_for(client.event("StasisEnd", channel["id"]))


@pytest.fixture
async def native_off(ari: Ari) -> AsyncIterator[None]:
    """The proxy's own broadcast: the native modules must not be there."""
    await ari.set_native_modules(False)
    try:
        yield
    finally:
        await ari.set_native_modules(True)


async def broadcast_call(ari: Ari, timeout_ms: int = 5000) -> str:
    """Run the drop-in subroutine on a new call; returns the token naming its result."""
    call = token()
    await ari.originate(
        "Local/s@conformance-proxy",
        variables={"__BCAST_DATA": str(timeout_ms), "__BCAST_TOKEN": call},
    )
    return call


async def test_node_ari_client_claims_a_broadcast(
    ari: Ari, proxy: ProxyProcess, native_off: None
) -> None:
    app = f"node-{token()}"
    async with node_app(proxy.base, app) as client:
        call = await broadcast_call(ari)
        offer = await client.wait_for(
            lambda m: m["kind"] == "event" and m["type"] == "CallBroadcast"
        )
        channel_id = offer["channel"]
        assert offer["application"] == app
        assert offer["resource"] == channel_id  # the CallBroadcast model says channel: Channel
        claimed = await client.wait_for(lambda m: m["kind"] in ("claimed", "claim_failed"))
        assert claimed == {"kind": "claimed", "channel": channel_id}
        start = await client.wait_for(client.event("StasisStart", channel_id))
        assert start["application"] == app
        assert (await ari.http.post(f"channels/{channel_id}/continue")).status_code == 204
        await client.wait_for(client.event("StasisEnd", channel_id))
        assert await ari.wait_global(f"BCAST_RESULT_{call}") == "SUCCESS"
        # Every event the client got had a model it knew (it throws otherwise).
        types = {m["type"] for m in client.messages if m["kind"] == "event"}
        assert {"CallBroadcast", "StasisStart", "StasisEnd"} <= types


# -- Python asyncari ----------------------------------------------------------------------------


async def next_event(listener: Any, timeout: float = 10) -> tuple[Any, Any]:
    with anyio.fail_after(timeout):
        async for item in listener:
            return item
    raise AssertionError("listener ended")


@pytest.mark.usefixtures("asyncari_leftovers")
async def test_asyncari_loads_the_api_from_the_proxy(proxy: ProxyProcess) -> None:
    async with asyncari.connect(proxy.base, f"py-{token()}", USER, PASSWORD) as client:
        assert client.swagger.api_docs["basePath"] == proxy.base + "/ari"
        # The claim operation was generated from the proxy's events.json.
        assert callable(client.events.claimChannel)
        assert {"CallBroadcast", "CallClaimed"} <= set(client.event_models)
        info = await client.asterisk.getInfo()
        assert info["system"]["version"].startswith("22.")


@pytest.mark.usefixtures("asyncari_leftovers")
async def test_asyncari_originates_and_receives_stasis_start(ari: Ari, proxy: ProxyProcess) -> None:
    app = f"py-{token()}"
    async with (
        asyncari.connect(proxy.base, app, USER, PASSWORD) as client,
        client.on_channel_event("StasisStart") as starts,
    ):
        channel = await client.channels.originate(
            endpoint="Local/s@tests-echo", app=app, appArgs="x"
        )
        assert isinstance(channel, Channel)
        objects, event = await next_event(starts)  # StasisStart has two Channel fields
        started = objects["channel"]
        assert isinstance(started, Channel)
        assert started.id == channel.id
        assert event.application == app
        assert event.args == ["x"]
        await started.hangup()
    assert (await ari.http.get(f"channels/{channel.id}")).status_code == 404


@pytest.mark.usefixtures("asyncari_leftovers")
async def test_asyncari_knows_call_broadcast_and_claims(
    ari: Ari, proxy: ProxyProcess, native_off: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncari")
    app = f"py-{token()}"
    async with (
        asyncari.connect(proxy.base, app, USER, PASSWORD) as client,
        # Raises "Cannot find event model 'CallBroadcast'" if events.json lacks it.
        client.on_channel_event("CallBroadcast") as offers,
        client.on_channel_event("StasisStart") as starts,
    ):
        call = await broadcast_call(ari)
        offered, event = await next_event(offers)
        assert isinstance(offered, Channel)  # the model's channel field became an object
        assert event.type == "CallBroadcast"
        assert event.application == app
        assert offered.id == event["channel"]["id"]
        await client.events.claimChannel(channelId=offered.id, application=app)
        objects, start = await next_event(starts)
        started = objects["channel"]
        assert started.id == offered.id
        assert start.application == app
        await started.continueInDialplan()
    assert await ari.wait_global(f"BCAST_RESULT_{call}") == "SUCCESS"
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "Cannot find event model" in m]

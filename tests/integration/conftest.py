"""Fixtures of the integration tests that compare native StasisBroadcast with the proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..ari import Ari, Asterisk
from ..conftest import ProxyProcess
from .scenarios import Target


@pytest.fixture
async def targets(
    asterisk: Asterisk, ari: Ari, proxy: ProxyProcess
) -> AsyncIterator[dict[str, Target]]:
    """The same Asterisk seen natively (its own applications, the dialplan running
    StasisBroadcast(); the test loads the native modules) and through the session's proxy;
    the native modules are loaded again afterwards."""
    direct_apps, proxied_apps = Ari(asterisk.base), Ari(proxy.base)
    try:
        yield {
            "native": Target("native", asterisk.base, "conformance-native", ari, direct_apps),
            "proxy": Target("proxy", proxy.base, "conformance-proxy", ari, proxied_apps),
        }
    finally:
        await ari.set_native_modules(True)
        await direct_apps.aclose()
        await proxied_apps.aclose()

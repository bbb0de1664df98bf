"""Native StasisBroadcast and the proxy, side by side on the same real Asterisk.

Every scenario in scenarios.py runs twice: natively (modules loaded, applications on
Asterisk) and through the proxy (modules unloaded, applications on the proxy). The two
observations must be identical; the native one is also checked against the spec, so the
comparison can never pass on two equally broken results.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ..ari import Ari, Asterisk
from ..conftest import ProxyProcess
from .scenarios import SCENARIOS, Target

NOT_FOUND = {"message": "Channel not found or not in broadcast state"}
CONFLICT = {"message": "Channel has already been claimed by another application"}

# What the spec (../shared/native-broadcast.md) says each scenario must show natively.
EXPECTED: dict[str, dict[str, Any]] = {
    "success": {
        "claim": {"status": 204, "body": None},
        "status": "SUCCESS",
        "answer_after_claim": 204,
        "late_claim": {"status": 404, "body": NOT_FOUND},
    },
    "args_several": {"status": "SUCCESS"},
    "args_empty_middle": {"status": "SUCCESS"},
    "args_none": {"status": "SUCCESS"},
    "race_of_six": {
        "statuses": [204, 409, 409, 409, 409, 409],
        "stasis_starts": [0, 0, 0, 0, 0, 1],
        "winner_started": 1,
        "status": "SUCCESS",
    },
    "filter_selects": {"claim": {"status": 204, "body": None}, "status": "SUCCESS"},
    "filter_unanchored_and_case_sensitive": {"status": "TIMEOUT"},
    "dangerous_regex_goes_to_everyone": {"status": "TIMEOUT"},
    "uncompilable_regex_goes_to_everyone": {"status": "TIMEOUT"},
    "no_matching_application": {"status": "TIMEOUT", "timing": "<1.6s"},
    "timeout_then_late_claim": {
        "status": "TIMEOUT",
        "late_claim": {"status": 404, "body": NOT_FOUND},
    },
    "timeout_invalid_letters": {"status": "TIMEOUT", "timing": "<0.8s"},
    "timeout_invalid_negative": {"status": "TIMEOUT", "timing": "<0.8s"},
    "timeout_invalid_too_large": {"status": "TIMEOUT", "timing": "<0.8s"},
    "timeout_with_unit_suffix": {"status": "TIMEOUT", "timing": "<1.6s"},
    "timeout_zero": {"status": "TIMEOUT", "timing": "<0.3s"},
    "notify_on": {"status": "SUCCESS"},
    "notify_on_uppercase_true": {"status": "SUCCESS"},
    "notify_off": {"status": "SUCCESS"},
    "notify_leading_space_is_off": {"status": "SUCCESS"},
    "bad_claims": {
        "no_params": {"status": 400, "body": {"message": "channelId parameter is required"}},
        "no_channel": {"status": 400, "body": {"message": "channelId parameter is required"}},
        "empty_channel": {"status": 400, "body": {"message": "channelId parameter is required"}},
        "no_application": {"status": 400, "body": {"message": "application parameter is required"}},
        "empty_application": {
            "status": 400,
            "body": {"message": "application parameter is required"},
        },
        "unknown_channel": {"status": 404, "body": NOT_FOUND},
        "channel_name": {"status": 404, "body": NOT_FOUND},
        "bad_json": {"status": 400, "body": {"message": "Error parsing request body"}},
        "json_body": {"status": 204, "body": None},
        "status": "SUCCESS",
    },
    "hangup_during_broadcast": {
        "status": "TIMEOUT",
        "late_claim": {"status": 404, "body": NOT_FOUND},
        "starts": 0,
    },
    "one_socket_several_apps": {
        "claims": [{"status": 204, "body": None}, {"status": 409, "body": CONFLICT}],
        "start_app": "two",
        "applications": ["one", "two"],
        "status": "SUCCESS",
    },
    "claim_over_rest_websocket": {"status": "SUCCESS"},
    "control_calls_before_the_claim": {
        "claim": {"status": 204, "body": None},
        "answer_after": 204,
        "status": "SUCCESS",
    },
    "repeat_broadcast_on_the_same_channel": {
        "first_status": "TIMEOUT",
        "status": "SUCCESS",
        "late_claim": {"status": 404, "body": NOT_FOUND},
        "claim": {"status": 204, "body": None},
    },
}


@pytest.fixture(params=["socket", "http"], ids=["handover-socket", "handover-http"])
async def targets(
    request: pytest.FixtureRequest, asterisk: Asterisk, ari: Ari
) -> AsyncIterator[dict[str, Target]]:
    """Native, and the proxy with hand-overs over the broadcast socket (REST over
    WebSocket, what this Asterisk has) or over HTTP (what older ones get)."""
    proxy: ProxyProcess = request.getfixturevalue(
        "proxy" if request.param == "socket" else "proxy_http"
    )
    variables = {} if request.param == "socket" else {"__ARI_BROADCAST_APP": "broadcast-http"}
    direct_apps = Ari(asterisk.base)
    proxied_apps = Ari(proxy.base)
    try:
        yield {
            "native": Target("native", asterisk.base, "conformance-native", ari, direct_apps),
            "proxy": Target("proxy", proxy.base, "conformance-proxy", ari, proxied_apps, variables),
        }
    finally:
        await ari.set_native_modules(True)
        await direct_apps.aclose()
        await proxied_apps.aclose()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_proxy_behaves_as_native(name: str, targets: dict[str, Target], ari: Ari) -> None:
    run = SCENARIOS[name]
    await ari.set_native_modules(True)
    native = await run(targets["native"])
    await ari.hangup_all()
    for key, value in EXPECTED[name].items():
        assert native[key] == value, f"native {name}.{key}: the spec says {value!r}"
    await ari.set_native_modules(False)
    proxied = await run(targets["proxy"])
    assert proxied == native, _diff(native, proxied)


def _diff(native: Any, proxied: Any) -> str:
    lines = [
        json.dumps(x, indent=1, sort_keys=True, default=str).splitlines() for x in (native, proxied)
    ]
    return "\n".join(difflib.unified_diff(*lines, "native", "proxy", lineterm="", n=2))

"""Configuration: flags win over ARI_PROXY_* variables, bad settings name themselves."""

from __future__ import annotations

import pytest

from ari_broadcast_proxy.config import Config
from ari_broadcast_proxy.errors import ConfigError

REQUIRED = ["--upstream", "http://127.0.0.1:8088", "--username", "u", "--password", "p"]


def test_defaults() -> None:
    config = Config.from_argv(REQUIRED, {})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8089)
    assert config.broadcast_app == "broadcast"
    assert config.upstream_ari == "http://127.0.0.1:8088/ari"
    assert config.upstream_ws == "ws://127.0.0.1:8088/ari"


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "ARI_PROXY_UPSTREAM": "http://10.0.0.1:8088/ari/",
        "ARI_PROXY_USERNAME": "env-user",
        "ARI_PROXY_PASSWORD": "env-pass",
        "ARI_PROXY_LISTEN": "0.0.0.0:9000",
        "ARI_PROXY_BROADCAST_APP": "from-env",
        "ARI_PROXY_LOG_JSON": "1",
    }
    from_env = Config.from_argv([], env)
    assert from_env.upstream == "http://10.0.0.1:8088"
    assert (from_env.listen_host, from_env.listen_port) == ("0.0.0.0", 9000)
    assert from_env.broadcast_app == "from-env"
    assert from_env.log_json
    flagged = Config.from_argv(["--broadcast-app", "from-flag", "--username", "flag-user"], env)
    assert flagged.broadcast_app == "from-flag"
    assert flagged.username == "flag-user"
    assert flagged.password == "env-pass"


@pytest.mark.parametrize(
    ("argv", "setting"),
    [
        (["--upstream", "not a url"], "--upstream"),
        (["--upstream", "ftp://x"], "--upstream"),
        (["--listen", "nowhere"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--broadcast-app", "has space"], "--broadcast-app"),
        (["--upstream-connections", "zero"], "--upstream-connections"),
        (["--upstream-timeout", "0"], "--upstream-timeout"),
        (["--log-level", "loud"], "--log-level"),
    ],
)
def test_bad_settings_name_the_setting(argv: list[str], setting: str) -> None:
    base = dict(zip(REQUIRED[::2], REQUIRED[1::2], strict=True))
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(ConfigError) as error:
        Config.from_argv([x for kv in base.items() for x in kv], {})
    assert error.value.setting == setting


@pytest.mark.parametrize("missing", ["--upstream", "--username", "--password"])
def test_required_settings(missing: str) -> None:
    argv = [x for i, x in enumerate(REQUIRED) if REQUIRED[i - (i % 2)] != missing]
    with pytest.raises(ConfigError, match="is required") as error:
        Config.from_argv(argv, {})
    assert error.value.setting == missing


def test_the_proxys_own_credentials_as_a_basic_authorization() -> None:
    config = Config(upstream="http://127.0.0.1:8088", username="broadcast-proxy", password="p:w")
    assert config.authorization == "Basic YnJvYWRjYXN0LXByb3h5OnA6dw=="

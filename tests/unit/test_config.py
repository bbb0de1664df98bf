"""Configuration: flags win over ARI_PROXY_* variables, bad settings name themselves."""

from __future__ import annotations

import pytest

from ari_broadcast_proxy.config import Config, Upstream
from ari_broadcast_proxy.errors import ConfigError

REQUIRED = ["--upstream", "http://127.0.0.1:8088", "--username", "u", "--password", "p"]


def test_defaults() -> None:
    config = Config.from_argv(REQUIRED, {})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8089)
    assert config.broadcast_app == "broadcast"
    assert config.upstreams == (Upstream("http://127.0.0.1:8088", "u", "p"),)
    assert config.upstream.ari == "http://127.0.0.1:8088/ari"
    assert config.upstream.ws == "ws://127.0.0.1:8088/ari"


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
    assert from_env.upstream.base == "http://10.0.0.1:8088"
    assert (from_env.listen_host, from_env.listen_port) == ("0.0.0.0", 9000)
    assert from_env.broadcast_app == "from-env"
    assert from_env.log_json
    flagged = Config.from_argv(["--broadcast-app", "from-flag", "--username", "flag-user"], env)
    assert flagged.broadcast_app == "from-flag"
    assert (flagged.upstream.username, flagged.upstream.password) == ("flag-user", "env-pass")


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
    upstream = Upstream("http://127.0.0.1:8088", "broadcast-proxy", "p:w")
    assert upstream.authorization == "Basic YnJvYWRjYXN0LXByb3h5OnA6dw=="


def test_several_upstreams_flags_or_environment() -> None:
    """Repeated flags, or commas in the environment; userinfo is that server's user."""
    argv = ["--username", "u", "--password", "p"]
    flags = ["--upstream", "http://a:8088", "--upstream", "https://x%40y:p%3Aw@b:8089/ari/"]
    env = {"ARI_PROXY_UPSTREAM": " http://a:8088, https://x%40y:p%3Aw@b:8089/ari/ "}
    for config in (Config.from_argv(argv + flags, {}), Config.from_argv(argv, env)):
        assert config.upstreams == (
            Upstream("http://a:8088", "u", "p"),
            Upstream("https://b:8089", "x@y", "p:w"),
        )
        assert [u.name for u in config.upstreams] == ["a:8088", "b:8089"]
        assert config.upstream is config.upstreams[0]


def test_credentials_needed_only_where_a_server_has_none() -> None:
    config = Config.from_argv(["--upstream", "http://v:w@a:8088"], {})
    assert config.upstream.authorization == Upstream("", "v", "w").authorization
    with pytest.raises(ConfigError, match="is required") as error:
        Config.from_argv(["--upstream", "http://v:w@a:8088", "--upstream", "http://b:1"], {})
    assert error.value.setting == "--username"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--upstream", "http://a:1", "--upstream", "http://a:1/ari"], "given twice"),
        (["--upstream", "http://a:1?x=1"], "no query"),
    ],
)
def test_bad_upstream_lists(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_argv([*argv, "--username", "u", "--password", "p"], {})

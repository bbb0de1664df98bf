"""The container setup: docker-compose.yml and its ha variant docker-compose.ha.yml, the
Dockerfiles, and examples/racing_app.py.

The compose files are validated by the real parser (`docker-compose config`, Debian package
`docker-compose`); without it these tests fail rather than skip. No Docker engine is needed:
tests/integration/test_docker_stack.py builds and runs the images in a real one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import configparser
import importlib
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "asterisk-conf"
SERVICES = {"asterisk", "proxy", "demo-alpha", "demo-beta"}
PROXY_ENV = {
    "ARI_PROXY_UPSTREAM": "http://127.0.0.1:8088",
    "ARI_PROXY_USERNAME": "broadcast-proxy",
    "ARI_PROXY_PASSWORD": "broadcast-proxy",
    "ARI_PROXY_LISTEN": "127.0.0.1:8089",
    "ARI_PROXY_BROADCAST_APP": "broadcast",
}


# --------------------------------------------------------------------------------------------
# docker-compose.yml through `docker-compose config`


def _compose_config(*files: str) -> dict[str, Any]:
    """The configuration of `files` (later ones override earlier ones) as docker-compose
    resolved it."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not on PATH: these tests validate docker-compose.yml with the real "
            "parser. Install it (Debian: apt-get install -y docker-compose).",
            pytrace=False,
        )
    result = subprocess.run(
        [exe, *(f"--file={name}" for name in files), "--project-directory", ".", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict), result.stdout
    return config


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml alone: the single-proxy stack."""
    return _compose_config("docker-compose.yml")


@pytest.fixture(scope="module")
def compose_ha() -> dict[str, Any]:
    """The ha variant: docker-compose.yml overridden by docker-compose.ha.yml."""
    return _compose_config("docker-compose.yml", "docker-compose.ha.yml")


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(source, target, read_only) for every bind mount, short or long syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            mounts.append((Path(source), target, "ro" in ",".join(mode).split(",")))
        elif volume.get("type") == "bind":
            mounts.append((Path(volume["source"]), volume["target"], bool(volume.get("read_only"))))
    return mounts


def _condition(service: dict[str, Any], dependency: str) -> str | None:
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        return "service_started" if dependency in depends_on else None
    entry = depends_on.get(dependency)
    return None if entry is None else entry.get("condition", "service_started")


def _healthcheck_command(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    assert test[0] in ("CMD", "CMD-SHELL"), test
    return " ".join(test[1:])


def _conf(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        comment_prefixes=(";",), inline_comment_prefixes=(";",), strict=False
    )
    parser.read_string((CONF / name).read_text())
    return parser


def test_compose_has_the_four_services_on_the_host_network(compose: dict[str, Any]) -> None:
    services = _services(compose)
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("network_mode") == "host", name
        # Builds too: no traffic over a Docker bridge (scripts/docker-engine starts dockerd
        # without one).
        if "build" in service:
            assert service["build"].get("network") == "host", name


def test_asterisk_service(compose: dict[str, Any]) -> None:
    asterisk = _services(compose)["asterisk"]
    build = asterisk["build"]
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == (
        ROOT / "docker" / "asterisk.Dockerfile"
    )
    assert (CONF.resolve(), "/etc/asterisk", True) in [
        (source.resolve(), target, read_only)
        for source, target, read_only in _bind_mounts(asterisk)
    ]
    assert asterisk["healthcheck"]["test"], "asterisk needs a healthcheck for depends_on"


def test_asterisk_healthcheck_matches_asterisk_conf(compose: dict[str, Any]) -> None:
    command = _healthcheck_command(_services(compose)["asterisk"])
    http = _conf("http.conf")["general"]
    assert f"/dev/tcp/{http['bindaddr']}/{http['bindport']}" in command
    assert "/ari/asterisk/ping" in command
    token = re.search(r"Authorization: Basic ([A-Za-z0-9+/=]+)", command)
    assert token is not None, command
    username, _, password = base64.b64decode(token.group(1)).decode().partition(":")
    assert _conf("ari.conf")[username]["password"] == password


def test_proxy_service(compose: dict[str, Any]) -> None:
    proxy = _services(compose)["proxy"]
    assert Path(proxy["build"]["context"]).resolve() == ROOT
    assert proxy["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    assert _environment(proxy) == PROXY_ENV
    assert _condition(proxy, "asterisk") == "service_healthy"


def test_proxy_healthcheck_is_readiness(compose: dict[str, Any]) -> None:
    """Healthy means /readyz answers 200 (the broadcast application is registered), not merely
    that the port accepts connections: the demo services start only then."""
    proxy = _services(compose)["proxy"]
    command = _healthcheck_command(proxy)
    listen = _environment(proxy)["ARI_PROXY_LISTEN"]
    assert f"http://{listen}/readyz" in command, command
    assert proxy["healthcheck"]["test"][:2] == ["CMD", "python"]
    # urlopen raises on 503, so the check fails while the proxy is not ready.
    assert "urllib.request.urlopen(" in command, command


def test_proxy_environment_matches_asterisk_conf(compose: dict[str, Any]) -> None:
    env = _environment(_services(compose)["proxy"])
    http = _conf("http.conf")["general"]
    assert env["ARI_PROXY_UPSTREAM"] == f"http://{http['bindaddr']}:{http['bindport']}"
    assert _conf("ari.conf")[env["ARI_PROXY_USERNAME"]]["password"] == env["ARI_PROXY_PASSWORD"]
    globals_app = re.search(
        r"^ARI_BROADCAST_APP\s*=\s*(\S+)", (CONF / "extensions.conf").read_text(), re.MULTILINE
    )
    assert globals_app is not None
    assert env["ARI_PROXY_BROADCAST_APP"] == globals_app.group(1)


def test_demo_services(compose: dict[str, Any]) -> None:
    services = _services(compose)
    listen = _environment(services["proxy"])["ARI_PROXY_LISTEN"]
    ari_users = _conf("ari.conf")
    names = set()
    for name in ("demo-alpha", "demo-beta"):
        demo = services[name]
        assert demo["image"] == services["proxy"]["image"], name
        entrypoint = demo["entrypoint"]
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
        assert entrypoint == ["python", "-m", "examples.racing_app"], name
        env = _environment(demo)
        assert env["RACING_APP_BASE_URL"] == f"http://{listen}", name
        assert env["RACING_APP_NAME"] == name
        assert (env["RACING_APP_USERNAME"], env["RACING_APP_PASSWORD"]) == ("asterisk", "asterisk")
        assert ari_users[env["RACING_APP_USERNAME"]]["password"] == env["RACING_APP_PASSWORD"]
        assert int(env["RACING_APP_CLAIM_DELAY_MS"]) > 0, "the demo apps must really race"
        assert _condition(demo, "proxy") == "service_healthy", name
        names.add(env["RACING_APP_NAME"])
    assert len(names) == 2


# --------------------------------------------------------------------------------------------
# The ha variant: docker-compose.yml + docker-compose.ha.yml

HA_SERVICES = SERVICES | {"valkey", "proxy-b"}
# What the ha file may change in docker-compose.yml's services; nothing else.
HA_CHANGES = {"proxy": {"environment", "depends_on"}, "demo-beta": {"environment", "depends_on"}}


def _valkey_port(service: dict[str, Any]) -> int:
    command = service["command"]
    command = shlex.split(command) if isinstance(command, str) else command
    return int(command[command.index("--port") + 1])


def _listen_port(service: dict[str, Any]) -> int:
    return int(_environment(service)["ARI_PROXY_LISTEN"].rpartition(":")[2])


def test_docker_compose_yml_alone_has_no_cluster(compose: dict[str, Any]) -> None:
    """The ha variant lives in its own file: docker-compose.yml stays the single proxy."""
    services = _services(compose)
    assert set(services) == SERVICES
    assert not [name for name, service in services.items() if service.get("profiles")]
    for name, service in services.items():
        env = _environment(service)
        assert not {"ARI_PROXY_CLUSTER_URL", "ARI_PROXY_REPLICA_ID"} & set(env), name
        if "RACING_APP_BASE_URL" in env:
            assert env["RACING_APP_BASE_URL"] == f"http://{PROXY_ENV['ARI_PROXY_LISTEN']}", name


def test_ha_services_on_the_host_network(compose_ha: dict[str, Any]) -> None:
    services = _services(compose_ha)
    assert set(services) == HA_SERVICES
    for name, service in services.items():
        assert service.get("network_mode") == "host", name
        if "build" in service:
            assert service["build"].get("network") == "host", name
        assert service.get("restart") == "unless-stopped", name


def test_ha_changes_only_proxy_and_demo_beta(
    compose: dict[str, Any], compose_ha: dict[str, Any]
) -> None:
    single, ha = _services(compose), _services(compose_ha)
    for name in SERVICES:
        changed = {
            key
            for key in set(single[name]) | set(ha[name])
            if single[name].get(key) != ha[name].get(key)
        }
        assert changed <= HA_CHANGES.get(name, set()), (name, changed)
    # proxy: the single proxy's settings plus the cluster's; demo-beta: only its URL.
    added = {k: v for k, v in _environment(ha["proxy"]).items() if k not in PROXY_ENV}
    assert set(added) == {"ARI_PROXY_CLUSTER_URL", "ARI_PROXY_REPLICA_ID"}
    assert _environment(ha["proxy"]) == {**PROXY_ENV, **added}
    beta_single, beta_ha = _environment(single["demo-beta"]), _environment(ha["demo-beta"])
    assert {k for k in beta_single if beta_single[k] != beta_ha[k]} == {"RACING_APP_BASE_URL"}


def test_ha_replicas(compose_ha: dict[str, Any]) -> None:
    services = _services(compose_ha)
    replicas = [services["proxy"], services["proxy-b"]]
    envs = [_environment(replica) for replica in replicas]
    # proxy-b is proxy on another port: the same image, upstream, ARI user, broadcast app.
    assert services["proxy-b"]["image"] == services["proxy"]["image"]
    assert services["proxy-b"]["build"] == services["proxy"]["build"]
    for key in ("ARI_PROXY_UPSTREAM", "ARI_PROXY_USERNAME", "ARI_PROXY_PASSWORD"):
        assert envs[0][key] == envs[1][key] == PROXY_ENV[key], key
    assert envs[0]["ARI_PROXY_BROADCAST_APP"] == envs[1]["ARI_PROXY_BROADCAST_APP"] == "broadcast"
    # One cluster: the same Valkey URL; two replicas: distinct ids and ports.
    port = _valkey_port(services["valkey"])
    assert envs[0]["ARI_PROXY_CLUSTER_URL"] == envs[1]["ARI_PROXY_CLUSTER_URL"]
    assert envs[0]["ARI_PROXY_CLUSTER_URL"] == f"redis://127.0.0.1:{port}/0"
    assert [env["ARI_PROXY_REPLICA_ID"] for env in envs] == ["proxy-a", "proxy-b"]
    assert [env["ARI_PROXY_LISTEN"] for env in envs] == ["127.0.0.1:8089", "127.0.0.1:8090"]
    for name, replica in zip(("proxy", "proxy-b"), replicas, strict=True):
        assert _condition(replica, "asterisk") == "service_healthy", name
        assert _condition(replica, "valkey") == "service_healthy", name
        command = _healthcheck_command(replica)
        assert f"http://{_environment(replica)['ARI_PROXY_LISTEN']}/readyz" in command, name
        assert replica["healthcheck"]["test"][:2] == ["CMD", "python"], name
        assert "urllib.request.urlopen(" in command, name
        assert replica["healthcheck"] == {
            **services["proxy"]["healthcheck"],
            "test": replica["healthcheck"]["test"],
        }, name


def test_ha_demos_race_through_different_replicas(compose_ha: dict[str, Any]) -> None:
    services = _services(compose_ha)
    for demo, replica in (("demo-alpha", "proxy"), ("demo-beta", "proxy-b")):
        listen = _environment(services[replica])["ARI_PROXY_LISTEN"]
        assert _environment(services[demo])["RACING_APP_BASE_URL"] == f"http://{listen}", demo
        assert _condition(services[demo], replica) == "service_healthy", demo
        assert services[demo]["image"] == services["proxy"]["image"], demo


def test_valkey_service(compose_ha: dict[str, Any]) -> None:
    valkey = _services(compose_ha)["valkey"]
    build = valkey["build"]
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == (
        ROOT / "docker" / "valkey.Dockerfile"
    )
    command = valkey["command"]
    assert command[command.index("--bind") + 1] == "127.0.0.1"
    # Nothing persisted: no RDB snapshots, no append-only file.
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    port = _valkey_port(valkey)
    check = _healthcheck_command(valkey)
    assert valkey["healthcheck"]["test"][0] == "CMD-SHELL"
    assert f"valkey-cli -h 127.0.0.1 -p {port} ping" in check, check
    assert "grep -qx PONG" in check, "an error reply must fail the check"


def test_ha_ports_do_not_clash(compose_ha: dict[str, Any]) -> None:
    """Every listener of the ha variant on its own port, none on a system Redis's 6379."""
    services = _services(compose_ha)
    http = _conf("http.conf")["general"]
    sip = re.search(r"^bind\s*=\s*127\.0\.0\.1:(\d+)", (CONF / "pjsip.conf").read_text(), re.M)
    assert sip is not None
    tcp = [
        int(http["bindport"]),
        _listen_port(services["proxy"]),
        _listen_port(services["proxy-b"]),
        _valkey_port(services["valkey"]),
    ]
    assert len(set(tcp)) == len(tcp), tcp
    assert 6379 not in tcp
    assert int(sip.group(1)) == 5060


def test_scripts_stack_uses_the_compose_ports(compose_ha: dict[str, Any]) -> None:
    """scripts/stack's sandbox variant listens where the compose ha variant does."""
    script = (ROOT / "scripts" / "stack").read_text()
    defaults = dict(re.findall(r"^\w+=\$\{(STACK_\w+):-([^}]*)\}$", script, re.M))
    services = _services(compose_ha)
    assert int(defaults["STACK_PROXY_PORT"]) == _listen_port(services["proxy"])
    assert int(defaults["STACK_PROXY_B_PORT"]) == _listen_port(services["proxy-b"])
    assert int(defaults["STACK_REDIS_PORT"]) == _valkey_port(services["valkey"])
    assert "-f docker-compose.yml -f docker-compose.ha.yml" in script
    assert "--remove-orphans" in script


def test_valkey_image(compose_ha: dict[str, Any]) -> None:
    dockerfile = ROOT / "docker" / "valkey.Dockerfile"
    stages = _stages(dockerfile)
    assert len(stages) == 1
    # The proxy's base image: scripts/docker-engine makes it (it reads the proxy's Dockerfile).
    assert stages[0][0] == _base_image(_stages(ROOT / "Dockerfile"), 0) == "debian:trixie-slim"
    assert _apt_install_packages(dockerfile) == ["valkey-server"]
    instructions = dict(stages[0][2])
    assert instructions["USER"] == "valkey"
    assert json.loads(instructions["ENTRYPOINT"]) == ["valkey-server"]
    assert json.loads(instructions["CMD"]) == _services(compose_ha)["valkey"]["command"]


# --------------------------------------------------------------------------------------------
# docker/asterisk.Dockerfile against scripts/asterisk-sandbox


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    parts: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = " ".join(parts).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        parts = []
    assert not parts, f"{path}: unterminated continuation line"
    return instructions


def _dockerfile_commands(path: Path) -> list[list[str]]:
    """Every shell command of every RUN, split into words."""
    commands = []
    for keyword, arguments in _dockerfile_instructions(path):
        if keyword == "RUN":
            for command in re.split(r"&&|;", arguments):
                commands.append(shlex.split(command))
    return commands


def _apt_install_packages(path: Path) -> list[str]:
    packages: list[str] = []
    for words in _dockerfile_commands(path):
        if "apt-get" in words and "install" in words:
            after = words[words.index("install") + 1 :]
            assert "--no-install-recommends" in after, words
            packages += [word for word in after if not word.startswith("-")]
    return packages


def _sandbox_packages() -> list[str]:
    match = re.search(
        r'^PACKAGES="([^"]*)"', (ROOT / "scripts" / "asterisk-sandbox").read_text(), re.MULTILINE
    )
    assert match is not None, "PACKAGES=... not found in scripts/asterisk-sandbox"
    return match.group(1).split()


def test_asterisk_image_installs_the_sandbox_packages() -> None:
    packages = _apt_install_packages(ROOT / "docker" / "asterisk.Dockerfile")
    assert packages, "no apt-get install in docker/asterisk.Dockerfile"
    assert sorted(packages) == sorted(_sandbox_packages())


def test_asterisk_image_matches_the_sandbox_setup() -> None:
    dockerfile = ROOT / "docker" / "asterisk.Dockerfile"
    instructions = dict(_dockerfile_instructions(dockerfile))
    assert instructions["FROM"] == "debian:sid"
    assert json.loads(instructions["CMD"]) == ["/usr/sbin/asterisk", "-f", "-U", "root", "-n"]
    for words in _dockerfile_commands(dockerfile):
        if "apt-get" in words and ("update" in words or "install" in words):
            assert "Acquire::Check-Valid-Until=false" in words, words
    # The sandbox chowns "$tmp"/var/{lib,spool,log,cache}/asterisk; the image the same folders.
    sandbox = (ROOT / "scripts" / "asterisk-sandbox").read_text()
    brace = re.search(r"chown -R root:root \S*/var/\{([a-z,]+)\}/asterisk", sandbox)
    assert brace is not None
    expected = {f"/var/{name}/asterisk" for name in brace.group(1).split(",")}
    chowned = [
        words[3:]
        for words in _dockerfile_commands(dockerfile)
        if words[:3] == ["chown", "-R", "root:root"]
    ]
    assert chowned, "the image does not chown the Asterisk state folders"
    assert set(chowned[0]) == expected


def _stages(path: Path) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(base, stage name, instructions) per FROM, in order."""
    stages: list[tuple[str, str, list[tuple[str, str]]]] = []
    for keyword, arguments in _dockerfile_instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append((words[0], name, []))
        else:
            assert stages, f"{path}: {keyword} before FROM"
            stages[-1][2].append((keyword, arguments))
    return stages


def _base_image(stages: list[tuple[str, str, list[tuple[str, str]]]], index: int) -> str:
    """The image a stage finally builds on, following FROM <earlier stage>."""
    names = {name: i for i, (_, name, _) in enumerate(stages) if name}
    base = stages[index][0]
    while base in names:
        base = stages[names[base]][0]
    return base


def _base_passwd_names() -> set[str]:
    """Users and groups every Debian-based image has (base-passwd's master files)."""
    names = set()
    for master in ("passwd.master", "group.master"):
        path = Path("/usr/share/base-passwd") / master
        assert path.exists(), f"{path} missing: this test reads Debian's base-passwd"
        names |= {line.split(":")[0] for line in path.read_text().splitlines() if line}
    assert "proxy" in names
    return names


def test_proxy_image() -> None:
    stages = _stages(ROOT / "Dockerfile")
    final = dict(stages[-1][2])
    # Debian's own python3 on debian:trixie-slim: scripts/docker-engine can make that base
    # image from Debian's mirror where no registry is reachable.
    assert _base_image(stages, len(stages) - 1) == "debian:trixie-slim"
    assert json.loads(final["ENTRYPOINT"]) == ["ari-broadcast-proxy"]
    assert final.get("USER") not in (None, "root", "0")
    everything = [item for _, _, instructions in stages for item in instructions]
    copied = " ".join(arguments for keyword, arguments in everything if keyword == "COPY")
    for needed in ("pyproject.toml", "README.md", "ari_broadcast_proxy/", "examples/"):
        assert needed in copied


def test_proxy_image_user_is_its_own() -> None:
    """`useradd proxy` failed on every Debian-based image: base-passwd has a user `proxy`."""
    stages = _stages(ROOT / "Dockerfile")
    final = stages[-1][2]
    user = dict(final)["USER"].split(":")[0]
    added = [
        words[-1]
        for keyword, arguments in final
        if keyword == "RUN"
        for command in re.split(r"&&|;", arguments)
        if (words := shlex.split(command)) and words[0] in ("useradd", "adduser")
    ]
    assert added == [user]
    assert user not in _base_passwd_names()


def test_proxy_image_keeps_build_settings_in_the_build_stage() -> None:
    """docker/pip-settings (this machine's pip settings) is read by the build stage only; the
    image takes nothing from that stage but the venv."""
    stages = _stages(ROOT / "Dockerfile")
    final_base, _, final = stages[-1]
    for index, (_, _, instructions) in enumerate(stages):
        copied = [a for k, a in instructions if k in ("COPY", "ADD")]
        if any("pip-setting" in a for a in copied):
            assert index != len(stages) - 1
            assert stages[index][1] != final_base, "the image builds on the build stage"
    from_build = [a for k, a in final if k == "COPY" and a.startswith("--from=")]
    assert from_build == ["--from=build /opt/venv /opt/venv"]
    assert not any("pip-setting" in a or "PIP_" in a for k, a in final if k in ("ENV", "ARG"))
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!docker/pip-settings/" in dockerignore


def test_base_images_can_be_made_from_debians_mirror() -> None:
    """Every base image is debian:<suite>[-slim], which scripts/docker-engine makes with
    debootstrap where no registry is reachable; its list is the Dockerfiles' own."""
    result = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$(sed -n "/^base_images()/,/^}/p" scripts/docker-engine)"; '
            "base_images Dockerfile docker/asterisk.Dockerfile",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.split() == ["debian:sid", "debian:trixie-slim"]
    for image in result.stdout.split():
        assert re.fullmatch(r"debian:[a-z]+(-slim)?", image), image


# --------------------------------------------------------------------------------------------
# examples/racing_app.py


@pytest.fixture(scope="module")
def racing_app() -> ModuleType:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("examples.racing_app")


def test_racing_app_defaults(racing_app: ModuleType) -> None:
    settings = racing_app.parse_args([], env={})
    assert settings == racing_app.Settings(
        base_url="http://127.0.0.1:8089",
        app="racing-app",
        username="asterisk",
        password="asterisk",
        hold_seconds=3.0,
        claim_delay_ms=0,
    )


def test_racing_app_environment_and_flags(racing_app: ModuleType) -> None:
    env = {
        "RACING_APP_BASE_URL": "http://proxy.example:8089/ari/",
        "RACING_APP_NAME": "demo-alpha",
        "RACING_APP_USERNAME": "u",
        "RACING_APP_PASSWORD": "p",
        "RACING_APP_HOLD_SECONDS": "1.5",
        "RACING_APP_CLAIM_DELAY_MS": "50",
    }
    settings = racing_app.parse_args([], env=env)
    assert settings.base_url == "http://proxy.example:8089"
    assert (settings.app, settings.username, settings.password) == ("demo-alpha", "u", "p")
    assert (settings.hold_seconds, settings.claim_delay_ms) == (1.5, 50)
    # A flag wins over its variable.
    flags = ["--app", "demo-beta", "--hold-seconds", "0", "--claim-delay-ms", "7"]
    settings = racing_app.parse_args(flags, env=env)
    assert (settings.app, settings.hold_seconds, settings.claim_delay_ms) == ("demo-beta", 0.0, 7)


@pytest.mark.parametrize(
    "argv",
    [
        ["--base-url", "ftp://host"],
        ["--base-url", "127.0.0.1:8089"],
        ["--hold-seconds", "-1"],
        ["--hold-seconds", "nan"],
        ["--claim-delay-ms", "1.5"],
        ["--claim-delay-ms", "-3"],
        ["--app", ""],
    ],
)
def test_racing_app_rejects_bad_values(racing_app: ModuleType, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        racing_app.parse_args(argv, env={})
    assert exc_info.value.code == 2


def test_racing_app_rejects_bad_environment(racing_app: ModuleType) -> None:
    with pytest.raises(SystemExit):
        racing_app.parse_args([], env={"RACING_APP_HOLD_SECONDS": "soon"})


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("http://127.0.0.1:8089", "ws://127.0.0.1:8089/ari/events?app=a+b&api_key=u%3Ap%40ss"),
        ("https://h/prefix/ari", "wss://h/prefix/ari/events?app=a+b&api_key=u%3Ap%40ss"),
    ],
)
def test_racing_app_events_url(racing_app: ModuleType, base_url: str, expected: str) -> None:
    settings = racing_app.parse_args(
        ["--base-url", base_url, "--app", "a b", "--username", "u", "--password", "p@ss"], env={}
    )
    assert settings.events_url == expected


def test_racing_app_describe(racing_app: ModuleType) -> None:
    event = {
        "type": "CallBroadcast",
        "channel": {"id": "1.2", "name": "PJSIP/alice-1", "state": "Ring"},
        "caller": "alice",
        "called": "100",
        "application": "demo-alpha",
    }
    assert racing_app.describe(event) == (
        'CallBroadcast channel=1.2 (PJSIP/alice-1, Ring) caller="alice" called="100"'
    )
    assert racing_app.describe({"type": "Dial"}) == "Dial"


class _FakeAri:
    """An httpx transport that records requests and answers claims with a fixed status."""

    def __init__(self, claim_status: int) -> None:
        self.claim_status = claim_status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/ari/events/claim":
            return httpx.Response(self.claim_status)
        return httpx.Response(204)

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.path}?{r.url.query.decode()}" for r in self.requests]


async def _run_app(
    racing_app: ModuleType,
    fake: _FakeAri,
    drive: Callable[[Any], Any],
    hold_seconds: float = 0.0,
) -> None:
    settings = racing_app.parse_args(
        ["--app", "demo-alpha", "--hold-seconds", str(hold_seconds)], env={}
    )
    async with httpx.AsyncClient(
        base_url=settings.base_url, transport=httpx.MockTransport(fake)
    ) as client:
        app = racing_app.RacingApp(settings, client)
        await drive(app)
        await asyncio.wait_for(asyncio.gather(*app._tasks), timeout=20)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(204, "won"), (409, "lost"), (404, "too late"), (500, "unexpected 500")],
)
async def test_racing_app_claims_broadcasts(
    racing_app: ModuleType, caplog: pytest.LogCaptureFixture, status: int, verdict: str
) -> None:
    fake = _FakeAri(status)

    async def drive(app: Any) -> None:
        channel = {"id": "1.2"}
        app.handle({"type": "CallBroadcast", "application": "demo-beta", "channel": channel})
        app.handle({"type": "CallBroadcast", "application": "demo-alpha", "channel": channel})

    with caplog.at_level(logging.INFO, logger="racing_app"):
        await _run_app(racing_app, fake, drive)
    assert fake.calls() == ["POST /ari/events/claim?channelId=1.2&application=demo-alpha"]
    assert any(f"claim channel=1.2 after 0 ms: {verdict}" in m for m in caplog.messages)


async def test_racing_app_answers_holds_and_continues(racing_app: ModuleType) -> None:
    fake = _FakeAri(204)

    async def drive(app: Any) -> None:
        app.handle({"type": "StasisStart", "application": "demo-alpha", "channel": {"id": "1.2"}})

    await _run_app(racing_app, fake, drive)
    assert fake.calls() == ["POST /ari/channels/1.2/answer?", "POST /ari/channels/1.2/continue?"]


async def test_racing_app_does_not_continue_a_channel_that_left(racing_app: ModuleType) -> None:
    fake = _FakeAri(204)

    async def drive(app: Any) -> None:
        channel = {"id": "1.2"}
        app.handle({"type": "StasisStart", "application": "demo-alpha", "channel": channel})
        await asyncio.sleep(0.05)
        app.handle({"type": "StasisEnd", "application": "demo-alpha", "channel": channel})

    await _run_app(racing_app, fake, drive, hold_seconds=30)
    assert fake.calls() == ["POST /ari/channels/1.2/answer?"]


def test_argparse_types_are_reusable(racing_app: ModuleType) -> None:
    assert racing_app.non_negative_int("0") == 0
    assert racing_app.non_negative_float("2.5") == 2.5
    with pytest.raises(argparse.ArgumentTypeError):
        racing_app.normalize_base_url("not a url")

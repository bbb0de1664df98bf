"""Frozen proxy configuration, built from command-line flags and an explicit environment."""

from __future__ import annotations

import argparse
import base64
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from . import __version__
from .errors import ConfigError

__all__ = ["ENV_PREFIX", "Config", "Upstream", "build_parser"]

ENV_PREFIX = "ARI_PROXY_"
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,73}$")


@dataclass(frozen=True)
class Upstream:
    """One Asterisk server: its HTTP base (e.g. http://127.0.0.1:8088, no /ari) and the
    proxy's own ARI user there."""

    base: str
    username: str
    password: str

    @property
    def name(self) -> str:
        """host:port, as logs, metrics and error messages name the server."""
        return httpx.URL(self.base).netloc.decode()

    @property
    def ari(self) -> str:
        return self.base + "/ari"

    @property
    def ws(self) -> str:
        return "ws" + self.ari[4:]

    @property
    def authorization(self) -> str:
        """The proxy's own Authorization header value towards this server (Basic)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return "Basic " + token


@dataclass(frozen=True)
class Config:
    upstreams: tuple[Upstream, ...]  # one or more Asterisk servers, in the order given
    listen_host: str = "127.0.0.1"
    listen_port: int = 8089
    broadcast_app: str = "broadcast"
    subroutine_context: str = "stasis-broadcast"
    upstream_connections: int = 32
    upstream_timeout: float = 10.0
    session_queue: int = 1024
    handover_transport: str = "auto"  # or "http": never REST over the broadcast socket
    log_level: str = "info"
    log_json: bool = False
    cluster_url: str | None = None  # redis://… or rediss://…: run as one of several replicas
    replica_id: str = ""

    @property
    def upstream(self) -> Upstream:
        """The first Asterisk server (the only one, unless several are given)."""
        return self.upstreams[0]

    @property
    def cluster_scope(self) -> str:
        """What the replicas' shared keys are named after: the Asterisk servers (their
        addresses) and one broadcast application; replicas must reach them at one URL each."""
        servers = ",".join(sorted(u.name for u in self.upstreams))
        return f"{servers}/{self.broadcast_app}"

    @classmethod
    def from_argv(cls, argv: Sequence[str], environ: Mapping[str, str]) -> Config:
        """Flags win over ARI_PROXY_* variables, which win over defaults."""
        parser = build_parser()
        args = parser.parse_args(list(argv))
        values = {}
        for action in parser._actions:
            if action.dest in ("help", "version"):
                continue
            flag_value = getattr(args, action.dest)
            env_value = environ.get(ENV_PREFIX + action.dest.upper())
            values[action.dest] = flag_value if flag_value is not None else env_value
        return cls._validated(values)

    @classmethod
    def _validated(cls, values: Mapping[str, str | bool | list[str] | None]) -> Config:
        def text(name: str, default: str | None = None) -> str:
            value = values.get(name)
            if value is None or value == "":
                if default is None:
                    raise ConfigError(f"--{name.replace('_', '-')}", "is required")
                return default
            return str(value)

        def number(name: str, default: float, kind: type = int, low: float = 1) -> float:
            raw = values.get(name)
            if raw is None or raw == "":
                return default
            try:
                value: float = kind(raw)
            except ValueError:
                raise ConfigError(f"--{name.replace('_', '-')}", f"not a number: {raw!r}") from None
            if value < low:
                raise ConfigError(f"--{name.replace('_', '-')}", f"must be at least {low}")
            return value

        username, password = text("username", ""), text("password", "")
        raw = values.get("upstream")
        given = raw if isinstance(raw, list) else str(raw or "").split(",")
        upstreams = tuple(
            _upstream(u.strip(), username, password) for u in given if u and u.strip()
        )
        if not upstreams:
            raise ConfigError("--upstream", "is required")
        names = [u.name for u in upstreams]
        if len(set(names)) < len(names):
            raise ConfigError("--upstream", f"a server is given twice: {', '.join(names)}")
        listen = text("listen", "127.0.0.1:8089")
        host, sep, port_text = listen.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ConfigError("--listen", f"expected HOST:PORT, got {listen!r}")
        broadcast_app = text("broadcast_app", "broadcast")
        if not _APP_NAME.match(broadcast_app):
            raise ConfigError(
                "--broadcast-app", f"not a valid Stasis application name: {broadcast_app!r}"
            )
        log_level = text("log_level", "info").lower()
        if log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("--log-level", f"unknown level {log_level!r}")
        handover_transport = text("handover_transport", "auto").lower()
        if handover_transport not in ("auto", "http"):
            raise ConfigError("--handover-transport", f"auto or http, not {handover_transport!r}")
        log_json = values.get("log_json")
        cluster_url = values.get("cluster_url") or None
        if cluster_url is not None:
            scheme = str(cluster_url).partition("://")[0]
            if scheme not in ("redis", "rediss", "unix"):
                raise ConfigError(
                    "--cluster-url", f"expected redis://, rediss:// or unix://, got {cluster_url!r}"
                )
        replica_id = text("replica_id", f"{socket.gethostname()}-{os.getpid()}")
        if not _APP_NAME.match(replica_id):
            raise ConfigError("--replica-id", f"letters, digits, _ . - only: {replica_id!r}")
        return cls(
            upstreams=upstreams,
            listen_host=host.strip("[]") or "127.0.0.1",
            listen_port=int(port_text),
            broadcast_app=broadcast_app,
            subroutine_context=text("subroutine_context", "stasis-broadcast"),
            upstream_connections=int(number("upstream_connections", 32)),
            upstream_timeout=float(number("upstream_timeout", 10.0, float, 0.1)),
            session_queue=int(number("session_queue", 1024, int, 16)),
            handover_transport=handover_transport,
            log_level=log_level,
            log_json=log_json in (True, "1", "true", "yes", "on"),
            cluster_url=None if cluster_url is None else str(cluster_url),
            replica_id=replica_id,
        )


def _upstream(given: str, username: str, password: str) -> Upstream:
    """One --upstream value: http(s)://[user:password@]host:port[/ari]; its userinfo, if
    any, is the proxy's user on that server instead of --username/--password."""
    try:
        url = httpx.URL(given)
    except httpx.InvalidURL as exc:
        raise ConfigError("--upstream", f"unparsable URL {given!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError("--upstream", f"expected http(s)://host:port, got {given!r}")
    if url.query or url.fragment:
        raise ConfigError("--upstream", f"no query or fragment expected: {given!r}")
    if url.userinfo:
        username, password = url.username, url.password or ""
    elif not username or not password:
        missing = "--username" if not username else "--password"
        raise ConfigError(missing, "is required (or user:password@ in every --upstream)")
    path = url.path.rstrip("/")
    path = path.removesuffix("/ari")
    host = f"[{url.host}]" if ":" in url.host else url.host
    port = f":{url.port}" if url.port is not None else ""
    return Upstream(f"{url.scheme}://{host}{port}{path}", username, password)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ari-broadcast-proxy",
        description=(
            "ARI proxy that gives any Asterisk native StasisBroadcast behaviour. Every flag can "
            f"also be set as {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}UPSTREAM); flags win."
        ),
    )
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add(
        "--upstream",
        action="append",
        help=(
            "Asterisk's HTTP base URL, e.g. http://127.0.0.1:8088 (required); repeat it (or "
            "separate URLs with commas in the environment) for several servers behind one "
            "endpoint; user:password@ in a URL is the proxy's user on that server"
        ),
    )
    add("--username", help="the proxy's own ARI user, for the broadcast application (required)")
    add("--password", help="that user's password (required)")
    add("--listen", help="HOST:PORT to serve ARI on (default 127.0.0.1:8089)")
    add(
        "--broadcast-app",
        help="the Stasis application the dialplan sends calls to (default broadcast)",
    )
    add(
        "--subroutine-context",
        help="dialplan context of the drop-in subroutine (default stasis-broadcast)",
    )
    add(
        "--upstream-connections",
        help="HTTP connections to Asterisk, keep below http.conf sessionlimit (default 32)",
    )
    add(
        "--upstream-timeout",
        help="seconds before an upstream call is abandoned with 504 (default 10)",
    )
    add(
        "--session-queue",
        help="events queued per client socket before it is closed as too slow (default 1024)",
    )
    add(
        "--handover-transport",
        help=(
            "how hand-overs and returns reach Asterisk: auto (REST over the broadcast "
            "application's socket where Asterisk has it, 20.14/22.4+; else HTTP) or http "
            "(default auto)"
        ),
    )
    add(
        "--cluster-url",
        help=(
            "redis://[user:password@]host:port/db (rediss:// for TLS): run as one of several "
            "replicas of this proxy sharing their calls through Redis or Valkey (default: "
            "one process, no Redis)"
        ),
    )
    add("--replica-id", help="this replica's name in the cluster (default HOSTNAME-PID)")
    add("--log-level", help="debug, info, warning or error (default info)")
    add(
        "--log-json",
        action="store_const",
        const=True,
        default=None,
        help="log one JSON object per line",
    )
    return parser

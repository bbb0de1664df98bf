"""The proxy's exceptions, and how a refusal becomes an HTTP answer (WebSocket close codes
are the events sessions' own: sessions.py).

ProxyError                     status, message: a refusal the proxy itself makes
├── BadRequest                 400
├── Reserved                   403 (the proxy's own application or variables)
├── UpstreamError              502 (Asterisk unreachable, refused or malformed answer)
│   └── UpstreamTimeout        504
└── ClusterUnavailable         503 (replicas: Redis cannot be reached, no verdict is taken)
ConfigError                    startup: a bad setting (exit status 2), never an HTTP answer
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

__all__ = [
    "BadRequest",
    "ClusterUnavailable",
    "ConfigError",
    "ProxyError",
    "Reserved",
    "UpstreamError",
    "UpstreamTimeout",
    "json_error",
]


class ProxyError(Exception):
    """A refusal with an HTTP status and a JSON `message`, as Asterisk's own errors."""

    status = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def response(self, headers: dict[str, str] | None = None) -> Response:
        return json_error(self.status, self.message, headers)


class BadRequest(ProxyError):
    status = 400


class Reserved(ProxyError):
    """A client request naming what belongs to the broadcast proxy alone."""

    status = 403

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} '{name}' is reserved for the broadcast proxy")


class UpstreamError(ProxyError):
    status = 502


class UpstreamTimeout(UpstreamError):
    status = 504


class ClusterUnavailable(ProxyError):
    status = 503

    def __init__(self, why: str) -> None:
        super().__init__(f"The broadcast cluster's store cannot be reached: {why}")


class ConfigError(Exception):
    """A setting that cannot work; `setting` names it for the one-line error."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Asterisk's error shape: `{"message": ...}` with `application/json`."""
    return Response(
        orjson.dumps({"message": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )

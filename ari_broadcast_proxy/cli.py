"""Command line: parse, build the frozen Config, run. Bad settings exit with status 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .config import Config
from .errors import ConfigError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = Config.from_argv(sys.argv[1:] if argv is None else argv, os.environ)
        from .server import run

        run(config)
    except ConfigError as exc:
        print(f"ari-broadcast-proxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None

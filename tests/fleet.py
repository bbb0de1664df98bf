"""Several real Asterisk servers side by side: sandbox instances with their own systemname and
entityid, for tests of one proxy in front of several Asterisk servers.

Instance i of a fleet is sandbox instance `f"{prefix}{i}"` (i = 0..count-1), with that same
string as its systemname: its channel ids read `f"{prefix}{i}-epoch.seq"`, and its entity id
(ARI's `asterisk_id`) is derived from it. Each has its own ARI port, config (the project's
asterisk-conf/ plus tests/asterisk-conf, as `start_asterisk`), database, spool, logs and
control socket.

    with fleet(2, f"fleet{os.getpid()}-") as (first, second):
        Ari(first.base), Ari(second.base) ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from .ari import PASSWORD, USER, Asterisk, start_asterisk, stop_asterisk


def fleet_names(count: int, prefix: str) -> list[str]:
    """The sandbox names (and systemnames) of a fleet."""
    return [f"{prefix}{i}" for i in range(count)]


def start_fleet(count: int, prefix: str) -> list[Asterisk]:
    """Start `count` instances in parallel and return them once every one answers ARI as
    itself (its /asterisk/info names its systemname). Refuses names already running; if any
    start fails, every instance of the fleet is stopped again before the error is raised."""
    names = fleet_names(count, prefix)
    if running := [name for name in names if asterisk_pids(name)]:
        raise RuntimeError(f"already running, left alone: {', '.join(running)}")
    try:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="fleet") as pool:
            futures = [pool.submit(start_asterisk, name, systemname=name) for name in names]
        errors = [e for f in futures if (e := f.exception()) is not None]
        if errors:
            raise errors[0]
        instances = [f.result() for f in futures]
        for instance in instances:
            info = httpx.get(f"{instance.base}/ari/asterisk/info", auth=(USER, PASSWORD))
            info.raise_for_status()
            seen = info.json()["config"]["name"]
            if seen != instance.name:  # two instances raced for one port
                raise RuntimeError(f"port {instance.port} of {instance.name} answers as {seen}")
    except BaseException:
        # None of these names ran before, and `down` is a no-op for an instance that is not
        # running: stop them all by name (a start killed by its timeout leaves no Asterisk).
        with contextlib.suppress(Exception):
            _stop_all([Asterisk(name, 0) for name in names])
        raise
    return instances


def stop_fleet(instances: Sequence[Asterisk]) -> None:
    """Stop every instance (in parallel), even if stopping one fails; then raise the first
    failure."""
    _stop_all(instances)


def _stop_all(instances: Sequence[Asterisk]) -> None:
    if not instances:
        return
    with ThreadPoolExecutor(max_workers=len(instances), thread_name_prefix="fleet") as pool:
        futures = [pool.submit(stop_asterisk, instance) for instance in instances]
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        raise errors[0]


@contextmanager
def fleet(count: int, prefix: str) -> Iterator[list[Asterisk]]:
    """`start_fleet` for the block, `stop_fleet` after it."""
    instances = start_fleet(count, prefix)
    try:
        yield instances
    finally:
        stop_fleet(instances)


def asterisk_pids(name: str) -> list[int]:
    """Pids of every asterisk process running sandbox instance `name`'s config (none once it
    is stopped), whoever started it."""
    config = f"/srv/asterisk/{name}/etc/asterisk.conf".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if argv and os.path.basename(argv[0]) == b"asterisk" and config in argv:
            pids.append(int(entry.name))
    return pids

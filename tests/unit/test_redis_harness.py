"""The tests' own `redis-server` (tests/redis_server.py): a real one, quick enough to start
here. It answers, loses its data on restart() and comes back on the same port, and kill()
leaves no process behind."""

from __future__ import annotations

import os
import socket

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..redis_server import RedisServer, redis_server_fixture  # noqa: F401


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_restart_loses_the_data_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"
    client = redis_server.client()
    assert client.set("harness", "value")
    assert client.get("harness") == b"value"
    first = redis_server.pid

    redis_server.restart()

    assert redis_server.port == port
    assert redis_server.pid != first
    assert first is not None and gone(first)
    assert client.ping()  # the same client reconnects: same address
    assert client.get("harness") is None
    assert client.dbsize() == 0


def test_kill_leaves_no_process() -> None:
    with RedisServer() as server:
        assert server.client(decode_responses=True).ping()
        pid = server.pid
        assert pid is not None
        assert server.kill() == -9
        assert not server.running()
        assert gone(pid)  # reaped: not even a zombie
        with (
            pytest.raises(ConnectionRefusedError),
            socket.create_connection(("127.0.0.1", server.port), timeout=1),
        ):
            pass
        with pytest.raises(redis.ConnectionError):
            server.client(retry=Retry(NoBackoff(), 0)).ping()
    assert not server.dir.exists()

"""The shared record of every broadcast, in Redis (or Valkey): one client, its scripts, its
messages. Every method is one round trip, bounded by `timeout`; a Redis that cannot answer
raises ClusterUnavailable, never hangs a caller.

Keys, all under one hash tag so that a Redis Cluster keeps them in one slot:

    abp:{scope}:lease             the leader's token (SET NX PX: a lease)
    abp:{scope}:active            zset: channel id -> deadline (epoch ms) of broadcasts on offer
    abp:{scope}:b:<channel>       hash: state (offered|claimed|session|ended), winner, offer,
                                  deadline
    abp:{scope}:to:<channel>      set: the applications the broadcast was offered to
    abp:{scope}:replicas          zset: replica id -> when its announcement expires (epoch ms)
    abp:{scope}:apps:<replica>    set: the applications connected to that replica

Messages (pub/sub channel abp:{scope}:events, JSON) only wake replicas up: anything that must
survive a replica's absence is in the keys above.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..errors import ClusterUnavailable
from . import scripts

__all__ = ["Keys", "Record", "SharedStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Arg = str | int  # what the scripts take

LINGER_MS = 10_000  # an ended broadcast still answers late claims with 404 (core.LINGER)
SESSION_TTL_MS = 24 * 3600 * 1000  # a claimed call's record, for its 409s, during the session
OFFER_MARGIN_MS = 60_000  # a record on offer outlives its deadline by this much


@dataclass(frozen=True)
class Keys:
    scope: str

    @property
    def prefix(self) -> str:
        return f"abp:{{{self.scope}}}:"

    @property
    def lease(self) -> str:
        return self.prefix + "lease"

    @property
    def active(self) -> str:
        return self.prefix + "active"

    @property
    def replicas(self) -> str:
        return self.prefix + "replicas"

    @property
    def events(self) -> str:
        return self.prefix + "events"

    def record(self, channel_id: str) -> str:
        return self.prefix + "b:" + channel_id

    def recipients(self, channel_id: str) -> str:
        return self.prefix + "to:" + channel_id

    def apps(self, replica: str) -> str:
        return self.prefix + "apps:" + replica


@dataclass
class Record:
    """A broadcast as Redis holds it (read when a replica takes over)."""

    channel_id: str
    state: str
    offer: dict[str, Any]
    deadline_ms: int
    winner: str | None
    recipients: set[str] = field(default_factory=set)


def now_ms() -> int:
    return int(time.time() * 1000)


class SharedStore:
    def __init__(self, url: str, scope: str, replica: str, timeout: float = 0.5) -> None:
        self.keys = Keys(scope)
        self.replica = replica
        self._timeout = timeout
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
            health_check_interval=5,
            # Never sent twice: a claim whose answer was lost must not run again (it would
            # answer 409 to its own winner). The caller decides what a failure means.
            retry=Retry(NoBackoff(), 0),
        )
        register = self._redis.register_script
        self._claim = register(scripts.CLAIM)
        self._offer = register(scripts.OFFER)
        self._expire = register(scripts.EXPIRE)
        self._end = register(scripts.END)
        self._session = register(scripts.SESSION)
        self._renew = register(scripts.LEASE_RENEW)
        self._release = register(scripts.LEASE_RELEASE)
        self._set_apps = register(scripts.SET_APPS)
        self.operations = 0  # round trips to Redis, for the bench and /metrics
        self.up = False  # the last round trip was answered

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _call(self, what: str, operation: Awaitable[T]) -> T:
        """One round trip, bounded; any failure is ClusterUnavailable."""
        self.operations += 1
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation
        except (RedisError, OSError) as exc:
            raise self._unavailable(f"{what}: {exc or type(exc).__name__}") from None
        except TimeoutError:
            raise self._unavailable(f"{what}: no answer in {self._timeout:g} s") from None
        if not self.up:
            log.info("Redis answers")
            self.up = True
        return result

    def _unavailable(self, why: str) -> ClusterUnavailable:
        """Logged once per outage (every caller still gets its 503)."""
        error = ClusterUnavailable(why)
        if self.up:
            log.error("%s", error.message)
            self.up = False
        return error

    def message(self, kind: str, channel_id: str = "", **fields: Any) -> str:
        return orjson.dumps({"k": kind, "r": self.replica, "c": channel_id, **fields}).decode()

    # -- claims and verdicts ------------------------------------------------------------------

    async def claim(self, channel_id: str, app: str) -> int:
        """0 (not a broadcast: Asterisk answers), 404, 409, 422 or 204 (won)."""
        keys = [self.keys.record(channel_id), self.keys.recipients(channel_id)]
        won = self.message("claimed", channel_id, app=app)
        result = await self._call(
            "claim", self._claim(keys=keys, args=[app, self.keys.events, won])
        )
        return int(result)

    async def offer(
        self,
        token: str,
        channel_id: str,
        offer: dict[str, Any],
        recipients: Iterable[str],
        deadline_ms: int,
        winner: str | None = None,
    ) -> bool:
        """Record an offer and tell every replica (False: this replica no longer leads).
        `winner`: record again a claimed broadcast that Redis lost."""
        apps = list(recipients)
        payload = orjson.dumps(offer).decode()
        announce = self.message("offer", channel_id, o=offer, d=deadline_ms, to=apps)
        ttl = max(deadline_ms - now_ms(), 0) + OFFER_MARGIN_MS
        keys = [
            self.keys.lease,
            self.keys.record(channel_id),
            self.keys.recipients(channel_id),
            self.keys.active,
        ]
        args: list[Arg] = [
            token,
            channel_id,
            payload,
            deadline_ms,
            ttl,
            self.keys.events,
            announce,
            winner or "",
            *apps,
        ]
        return bool(await self._call("offer", self._offer(keys=keys, args=args)))

    async def expire(self, token: str, channel_id: str) -> tuple[str, str | None]:
        """The deadline's verdict: ('expired', None), ('claimed', winner), ('ended', None)
        or ('fenced', None)."""
        keys = [self.keys.lease, self.keys.record(channel_id), self.keys.active]
        ended = self.message("ended", channel_id, why="timeout")
        args: list[Arg] = [token, channel_id, LINGER_MS, self.keys.events, ended]
        result = await self._call("expire", self._expire(keys=keys, args=args))
        return str(result[0]), (str(result[1]) if len(result) > 1 else None)

    async def end(self, channel_id: str, why: str) -> None:
        keys = [self.keys.record(channel_id), self.keys.active]
        ended = self.message("ended", channel_id, why=why)
        await self._call(
            "end", self._end(keys=keys, args=[channel_id, LINGER_MS, self.keys.events, ended])
        )

    async def session_started(self, channel_id: str, app: str) -> None:
        keys = [self.keys.record(channel_id), self.keys.active]
        started = self.message("started", channel_id, app=app)
        args: list[Arg] = [channel_id, SESSION_TTL_MS, self.keys.events, started]
        await self._call("session", self._session(keys=keys, args=args))

    async def records(self) -> list[Record]:
        """Every broadcast on offer or claimed and not yet in its winner's session."""
        listed = await self._call("list", self._redis.zrange(self.keys.active, 0, -1))
        channel_ids = [str(c) for c in listed]
        if not channel_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for channel_id in channel_ids:
            pipe.hgetall(self.keys.record(channel_id))
            pipe.smembers(self.keys.recipients(channel_id))
        replies = await self._call("read", pipe.execute())
        records = []
        for i, channel_id in enumerate(channel_ids):
            fields, recipients = replies[2 * i], replies[2 * i + 1]
            if not fields or fields.get("state") == "ended":
                continue
            records.append(
                Record(
                    channel_id=channel_id,
                    state=fields["state"],
                    offer=orjson.loads(fields.get("offer", "{}")),
                    deadline_ms=int(fields.get("deadline", 0)),
                    winner=fields.get("winner"),
                    recipients=set(recipients),
                )
            )
        return records

    async def states(self, channel_ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
        """Each broadcast's state and winner as Redis has them ((None, None): no record)."""
        pipe = self._redis.pipeline(transaction=False)
        for channel_id in channel_ids:
            pipe.hmget(self.keys.record(channel_id), ["state", "winner"])
        replies = await self._call("read", pipe.execute())
        return {c: (r[0], r[1]) for c, r in zip(channel_ids, replies, strict=True)}

    # -- leadership ---------------------------------------------------------------------------

    async def acquire(self, token: str, ttl_ms: int) -> bool:
        result = self._redis.set(self.keys.lease, token, nx=True, px=ttl_ms)
        return bool(await self._call("lease", result))

    async def renew(self, token: str, ttl_ms: int) -> bool:
        result = self._renew(keys=[self.keys.lease], args=[token, ttl_ms])
        return bool(await self._call("lease", result))

    async def release(self, token: str) -> bool:
        resign = self.message("resign")
        result = self._release(keys=[self.keys.lease], args=[token, self.keys.events, resign])
        return bool(await self._call("lease", result))

    async def leader(self) -> str | None:
        """The token of the replica that leads now (None: nobody)."""
        token = await self._call("lease", self._redis.get(self.keys.lease))
        return None if token is None else str(token)

    # -- membership ---------------------------------------------------------------------------

    async def announce(self, apps: list[str], ttl_ms: int, changed: bool) -> None:
        """This replica is alive with these applications (`changed`: tell the others now)."""
        message = self.message("apps", apps=apps) if changed else ""
        keys = [self.keys.apps(self.replica), self.keys.replicas]
        args: list[Arg] = [self.replica, ttl_ms, now_ms(), self.keys.events, message, *apps]
        await self._call("announce", self._set_apps(keys=keys, args=args))

    async def replicas(self) -> dict[str, set[str]]:
        """Every live replica and its applications."""
        live = self._redis.zrangebyscore(self.keys.replicas, now_ms(), "+inf")
        names = [str(n) for n in await self._call("replicas", live)]
        if not names:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            pipe.smembers(self.keys.apps(name))
        replies = await self._call("replicas", pipe.execute())
        return {name: set(apps) for name, apps in zip(names, replies, strict=True)}

    # -- messages -----------------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Every message on the events channel, from the moment this is subscribed; ends
        (ClusterUnavailable) when the connection drops."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            try:
                await self._call("subscribe", pubsub.subscribe(self.keys.events))
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        yield orjson.loads(message["data"])
            except (RedisError, OSError) as exc:
                raise self._unavailable(f"messages: {exc or type(exc).__name__}") from None
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

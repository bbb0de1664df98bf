"""The claim scripts (cluster/scripts.py through SharedStore) against a real redis-server,
under concurrent interleavings chosen by hypothesis.

Three SharedStore objects play three replicas. A leader offers a broadcast, then batches of
operations (claims through any replica, deadline verdicts with the leader's, an old or a
never-held token, END, the winner's session, lease takeovers) run concurrently: the ops of
one batch are gathered together, the batches follow each other. Besides the stated rules
(one winner at most, never both a winner and an 'expired' verdict, a fenced verdict changes
nothing...), every run must be linearizable: some order of each batch's atomic steps, run
through a model of the scripts, gives exactly the answers Redis gave and the state it holds
at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ari_broadcast_proxy.cluster.store import SharedStore, now_ms

from ..redis_server import RedisServer

APPS = ["alpha", "beta", "gamma", "delta", "epsilon"]
REPLICAS = 3
LEASE_MS = 60_000  # never lapses during a test
TIMEOUT = 5.0  # generous: a loaded machine must not turn into ClusterUnavailable
WIRE = {"type": "StasisBroadcast", "channel": {"name": "PJSIP/test"}, "variables": {"k": "v"}}


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as redis_server:
        yield redis_server


def stores(server: RedisServer, scope: str) -> list[SharedStore]:
    return [SharedStore(server.url, scope, f"replica-{i}", TIMEOUT) for i in range(REPLICAS)]


# -- operations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    app: str
    replica: int


@dataclass(frozen=True)
class Expire:
    token: str
    replica: int


@dataclass(frozen=True)
class End:
    replica: int


@dataclass(frozen=True)
class Session:
    replica: int


@dataclass(frozen=True)
class Takeover:
    """The replica holding `old` (as far as the generator knows) resigns and `replica`
    takes the lease with `new`: two round trips, others may run between them."""

    old: str
    new: str
    replica: int


Op = Claim | Expire | End | Session | Takeover

FIRST_TOKEN = "lease-0"
NEVER_HELD = "never-held"


@dataclass(frozen=True)
class Scenario:
    recipients: frozenset[str]
    batches: tuple[tuple[Op, ...], ...]
    yields: tuple[tuple[int, ...], ...]  # sleep(0)s before each op starts, per batch


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    recipients = frozenset(draw(st.sets(st.sampled_from(APPS), min_size=1)))
    replica = st.integers(0, REPLICAS - 1)
    tokens = [FIRST_TOKEN]  # in generation order: the last is "the leader's" at that point
    batches: list[tuple[Op, ...]] = []
    yields: list[tuple[int, ...]] = []
    for _ in range(draw(st.integers(1, 4))):
        batch: list[Op] = []
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(
                st.sampled_from(
                    ["claim", "claim", "claim", "claim", "expire", "end", "session", "takeover"]
                )
            )
            if kind == "claim":
                batch.append(Claim(draw(st.sampled_from(APPS)), draw(replica)))
            elif kind == "expire":
                which = draw(st.sampled_from(["leader", "leader", "old", "never"]))
                token = {
                    "leader": tokens[-1],
                    "old": tokens[0],
                    "never": NEVER_HELD,
                }[which]
                batch.append(Expire(token, draw(replica)))
            elif kind == "end":
                batch.append(End(draw(replica)))
            elif kind == "session":
                batch.append(Session(draw(replica)))
            else:
                new = f"lease-{len(tokens)}"
                batch.append(Takeover(tokens[-1], new, draw(replica)))
                tokens.append(new)
        batches.append(tuple(batch))
        yields.append(tuple(draw(st.integers(0, 3)) for _ in batch))
    return Scenario(recipients, tuple(batches), tuple(yields))


# -- a model of the scripts, one atomic step at a time ---------------------------------------


@dataclass(frozen=True)
class Model:
    lease: str | None
    state: str  # offered | claimed | session | ended
    winner: str | None


Step = tuple[str, Any]  # (kind, argument)


def steps(op: Op) -> list[Step]:
    if isinstance(op, Claim):
        return [("claim", op.app)]
    if isinstance(op, Expire):
        return [("expire", op.token)]
    if isinstance(op, End):
        return [("end", None)]
    if isinstance(op, Session):
        return [("session", None)]
    return [("release", op.old), ("acquire", op.new)]


def apply(model: Model, step: Step, recipients: frozenset[str]) -> tuple[Model, Any]:
    kind, arg = step
    if kind == "claim":
        if model.state == "ended":
            return model, 404
        if model.state != "offered":
            return model, 409
        if arg not in recipients:
            return model, 422
        return Model(model.lease, "claimed", arg), 204
    if kind == "expire":
        if model.lease != arg:
            return model, ("fenced", None)
        if model.state == "ended":
            return model, ("ended", None)
        if model.state != "offered":
            return model, ("claimed", model.winner)
        return Model(model.lease, "ended", model.winner), ("expired", None)
    if kind == "end":
        return Model(model.lease, "ended", model.winner), None
    if kind == "session":
        if model.state == "claimed":
            return Model(model.lease, "session", model.winner), None
        return model, None
    if kind == "release":
        if model.lease == arg:
            return Model(None, model.state, model.winner), True
        return model, False
    assert kind == "acquire"
    if model.lease is None:
        return Model(arg, model.state, model.winner), True
    return model, False


def linearizable(
    recipients: frozenset[str],
    batches: list[list[tuple[list[Step], list[Any]]]],
    final: Model,
) -> bool:
    """Is there an order of each batch's steps (each op's own steps in their order, every
    step of a batch before any of the next) that the model answers exactly as Redis did,
    ending in the state Redis holds?"""
    seen: set[tuple[int, tuple[int, ...], Model]] = set()

    def search(b: int, done: tuple[int, ...], model: Model) -> bool:
        if b == len(batches):
            return model == final
        batch = batches[b]
        if all(n == len(op_steps) for n, (op_steps, _) in zip(done, batch, strict=True)):
            following = batches[b + 1] if b + 1 < len(batches) else []
            return search(b + 1, (0,) * len(following), model)
        key = (b, done, model)
        if key in seen:
            return False
        seen.add(key)
        for i, (op_steps, answers) in enumerate(batch):
            n = done[i]
            if n == len(op_steps):
                continue
            after, answer = apply(model, op_steps[n], recipients)
            if answer != answers[n]:
                continue
            if search(b, (*done[:i], n + 1, *done[i + 1 :]), after):
                return True
        return False

    return search(0, (0,) * len(batches[0]), Model(FIRST_TOKEN, "offered", None))


# -- running a scenario -----------------------------------------------------------------------


async def run_op(replicas: list[SharedStore], channel: str, op: Op, yields: int) -> list[Any]:
    """The op's answers, one per atomic step."""
    for _ in range(yields):
        await asyncio.sleep(0)
    if isinstance(op, Claim):
        return [await replicas[op.replica].claim(channel, op.app)]
    if isinstance(op, Expire):
        return [await replicas[op.replica].expire(op.token, channel)]
    if isinstance(op, End):
        return [await replicas[op.replica].end(channel, "hangup")]
    if isinstance(op, Session):
        return [await replicas[op.replica].session_started(channel, "anyone")]
    resigned = await replicas[(op.replica + 1) % REPLICAS].release(op.old)
    return [resigned, await replicas[op.replica].acquire(op.new, LEASE_MS)]


async def scenario(server: RedisServer, plan: Scenario) -> None:
    scope = "claim-" + uuid.uuid4().hex[:12]  # a lease of its own for every example
    channel = "chan-" + uuid.uuid4().hex[:12]
    replicas = stores(server, scope)
    leader = replicas[0]
    try:
        assert await leader.acquire(FIRST_TOKEN, LEASE_MS)
        deadline = now_ms() + 30_000
        assert await leader.offer(FIRST_TOKEN, channel, WIRE, plan.recipients, deadline)
        record = leader.keys.record(channel)
        redis = leader._redis

        observed: list[list[tuple[list[Step], list[Any]]]] = []
        for batch, yields in zip(plan.batches, plan.yields, strict=True):
            answers = await asyncio.gather(
                *(run_op(replicas, channel, op, y) for op, y in zip(batch, yields, strict=True))
            )
            observed.append([(steps(op), a) for op, a in zip(batch, answers, strict=True)])

        # -- the stated rules, whatever the order within a batch ------------------------------
        claims = [
            (b, op.app, answer[0])
            for b, batch in enumerate(observed)
            for (_, answer), op in zip(batch, plan.batches[b], strict=True)
            if isinstance(op, Claim)
        ]
        verdicts = [
            (op.token, answer[0])
            for b, batch in enumerate(observed)
            for (_, answer), op in zip(batch, plan.batches[b], strict=True)
            if isinstance(op, Expire)
        ]
        won = [(b, app) for b, app, code in claims if code == 204]
        assert len(won) <= 1, f"several winners: {won}"
        assert all(code in (204, 409, 404, 422) for _, _, code in claims), claims
        for _, app, code in claims:
            if app not in plan.recipients:
                assert code != 204, f"{app} won but was not offered the broadcast"
        expired = [v for v in verdicts if v[1][0] == "expired"]
        event("outcome: " + ("won" if won else "expired" if expired else "neither"))
        for batch in plan.batches:
            kinds = {type(op).__name__ for op in batch}
            if {"Claim", "Expire"} <= kinds:
                event("a claim and a verdict raced in one batch")
        assert len(expired) <= 1, f"the deadline's verdict taken twice: {expired}"
        assert not (won and expired), f"a winner {won} and an 'expired' verdict {expired}"
        if won:
            won_batch, winner = won[0]
            for b, app, code in claims:
                if b > won_batch:
                    assert code in (409, 404), f"{app} got {code} after {winner} won"
            for _, verdict in verdicts:
                assert verdict[0] in ("claimed", "ended", "fenced"), verdict
                if verdict[0] == "claimed":
                    assert verdict[1] == winner
        for token, verdict in verdicts:
            if token == NEVER_HELD:
                assert verdict == ("fenced", None)

        # -- what Redis holds --------------------------------------------------------------
        fields = await redis.hgetall(record)
        lease = await redis.get(leader.keys.lease)
        active = await redis.zscore(leader.keys.active, channel)
        winner_now = fields.get("winner")
        assert winner_now == (won[0][1] if won else None)
        assert (active is not None) == (fields["state"] in ("offered", "claimed")), (
            fields,
            active,
        )
        final = Model(lease, fields["state"], winner_now)
        assert linearizable(plan.recipients, observed, final), (
            f"no order of the batches' steps gives these answers: {observed}, final {final}"
        )

        # -- afterwards: every claim loses, a lease holder's verdict agrees ------------------
        late = await asyncio.gather(
            *(replicas[i % REPLICAS].claim(channel, app) for i, app in enumerate(APPS))
        )
        late_won = [app for app, code in zip(APPS, late, strict=True) if code == 204]
        for app, code in zip(APPS, late, strict=True):
            if fields["state"] == "ended":
                assert code == 404, (app, code)
            elif won:
                assert code == 409, (app, code)
            elif app in late_won:
                assert app in plan.recipients
            elif app in plan.recipients:
                assert code == 409, (app, code)
            else:
                assert code in (409, 422), (app, code)
        if fields["state"] == "offered":
            assert len(late_won) == 1, late  # on offer to at least one of them
        else:
            assert late_won == []
        holder = lease
        if holder is None:
            holder = "lease-final"
            assert await replicas[2].acquire(holder, LEASE_MS)
        last = await replicas[1].expire(holder, channel)
        if fields["state"] == "ended":
            assert last == ("ended", None)
        else:
            assert last == ("claimed", won[0][1] if won else late_won[0])
        # a fenced verdict changes nothing
        before = await redis.hgetall(record)
        assert await replicas[1].expire(NEVER_HELD, channel) == ("fenced", None)
        assert await redis.hgetall(record) == before
    finally:
        for store in replicas:
            await store.aclose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=scenarios())
def test_claims_and_verdicts_are_atomic_under_interleavings(
    server: RedisServer, plan: Scenario
) -> None:
    # A loop of its own per example (no set_event_loop: the session loop is left alone).
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        runner.run(scenario(server, plan))


# -- deterministic: many concurrent claims, one winner ---------------------------------------


async def test_fifty_concurrent_claims_have_exactly_one_winner(server: RedisServer) -> None:
    apps = [f"app-{i}" for i in range(10)]
    recipients = set(apps[:7])
    replicas = stores(server, "claim-fifty-" + uuid.uuid4().hex[:8])
    try:
        assert await replicas[0].acquire("leader", LEASE_MS)
        for round_ in range(10):
            channel = f"chan-{round_}-{uuid.uuid4().hex[:8]}"
            assert await replicas[0].offer("leader", channel, WIRE, recipients, now_ms() + 30_000)
            claimants = [apps[i % 10] for i in range(50)]
            claims: list[Awaitable[int]] = [
                replicas[i % REPLICAS].claim(channel, app) for i, app in enumerate(claimants)
            ]
            answers = await asyncio.gather(*claims)
            winners = [app for app, code in zip(claimants, answers, strict=True) if code == 204]
            assert len(winners) == 1, answers
            assert winners[0] in recipients
            for app, code in zip(claimants, answers, strict=True):
                if code == 204:
                    continue
                if app in recipients:
                    assert code == 409, (app, code)
                else:
                    assert code in (409, 422), (app, code)
            assert sum(code != 204 for code in answers) == 49
            record = await replicas[1]._redis.hgetall(replicas[1].keys.record(channel))
            assert record["state"] == "claimed"
            assert record["winner"] == winners[0]
            assert await replicas[2].expire("leader", channel) == ("claimed", winners[0])
            assert await replicas[2].claim(channel, winners[0]) == 409
    finally:
        for store in replicas:
            await store.aclose()

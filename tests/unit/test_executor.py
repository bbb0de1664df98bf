"""The executor with a fake channel gateway and a fake clock: the hand-over paths Asterisk
cannot be made to produce on demand (a lost answer, the watchdog, failed returns)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ari_broadcast_proxy.broadcast.app_filter import AppFilter
from ari_broadcast_proxy.broadcast.core import (
    HANDOVER_WATCHDOG,
    RELEASE_GRACE,
    BroadcastCore,
    ClaimOutcome,
    State,
    Verdict,
)
from ari_broadcast_proxy.broadcast.dialplan import parse_broadcast_data
from ari_broadcast_proxy.broadcast.executor import Executor, Offer
from ari_broadcast_proxy.broadcast.handover import HandOverResult
from ari_broadcast_proxy.broadcast.presentation import Invocation, Presenter
from ari_broadcast_proxy.errors import ProxyError, UpstreamTimeout
from ari_broadcast_proxy.metrics import Metrics
from ari_broadcast_proxy.registry import AppRegistry

INVOCATION = Invocation("direct", "", "default", "100", 1)


class FakeHandle:
    def __init__(self, clock: FakeClock, when: float, callback: Callable[..., Any], args: Any):
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False
        self._clock = clock

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Time moves only when told; sleeps advance it and yield."""

    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self.handles: list[FakeHandle] = []
        self.slept: list[float] = []

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self, when, callback, args)
        self.handles.append(handle)
        return handle

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        callback(*args)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._now += seconds
        await asyncio.sleep(0)

    def pending(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled]

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for handle in sorted(self.pending(), key=lambda h: h.when):
            if handle.when <= self._now and not handle.cancelled:
                handle.cancelled = True
                handle.callback(*handle.args)


class FakeGateway:
    """The channel gateway (handover.ChannelGateway), scripted."""

    def __init__(self) -> None:
        self.answer: Callable[[], Awaitable[HandOverResult]] = self._done
        self.parked_answers: list[bool | Exception] = []
        self.exists_answer = True
        self.resumed: list[tuple[str, Verdict]] = []
        self.resume_result = True
        self.parked_now: list[str] = []
        self.live: set[str] | None = set()
        self.hand_overs: list[tuple[str, str]] = []

    @staticmethod
    async def _done() -> HandOverResult:
        return HandOverResult.DONE

    @staticmethod
    def moves(invocation: Invocation, args: tuple[str, ...]) -> bool:
        return False

    def attach(self, socket: Any) -> None:
        pass

    async def preset_status(self, channel_id: str) -> None:
        pass

    async def hand_over(
        self, channel_id: str, invocation: Invocation, winner: str, args: tuple[str, ...]
    ) -> Awaitable[HandOverResult]:
        self.hand_overs.append((channel_id, winner))
        return self.answer()

    async def resume(self, channel_id: str, invocation: Invocation, verdict: Verdict) -> bool:
        self.resumed.append((channel_id, verdict))
        return self.resume_result

    async def parked(self, channel_id: str) -> bool:
        answer = self.parked_answers.pop(0) if self.parked_answers else False
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def exists(self, channel_id: str) -> bool:
        return self.exists_answer

    async def channels_in(self, app: str) -> list[str]:
        return list(self.parked_now)

    async def live_channels(self) -> set[str] | None:
        return self.live

    async def invocation_of(self, channel_id: str) -> Invocation | None:
        return INVOCATION


class Sink:
    def __init__(self) -> None:
        self.events: list[str] = []

    def send_event(self, text: str) -> None:
        self.events.append(text)


class World:
    def __init__(self, apps: tuple[str, ...] = ("alpha", "beta")) -> None:
        self.clock = FakeClock()
        self.gateway = FakeGateway()
        self.registry = AppRegistry()
        self.sinks = {app: Sink() for app in apps}
        for app, sink in self.sinks.items():
            self.registry.register(sink, [app])
        self.metrics = Metrics()
        self.presenter = Presenter("broadcast", "stasis-broadcast")
        self.core: BroadcastCore[Offer] = BroadcastCore()
        self.executor = Executor(
            self.core,
            self.gateway,  # type: ignore[arg-type]
            self.registry,
            self.presenter,
            self.metrics,
            self.clock,
        )

    def offer(self, channel_id: str = "chan-1", timeout_ms: int = 500) -> None:
        offer = Offer(
            invocation=INVOCATION,
            options=parse_broadcast_data(""),
            app_filter=AppFilter.compile("")[0],
            channel={"id": channel_id},
            asterisk_id=None,
            timestamp="t",
        )
        self.presenter.remember(channel_id, INVOCATION)
        commands = self.core.offer(
            channel_id, offer, list(self.sinks), timeout_ms, False, self.clock.now()
        )
        self.executor.execute(commands)

    async def claim(self, channel_id: str = "chan-1", app: str = "alpha") -> ClaimOutcome:
        outcome, commands = self.core.claim(channel_id, app, self.clock.now())
        await self.executor.carry_out(commands)
        await settle()
        return outcome

    def outcome(self, label: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ari_proxy_broadcast_outcomes_total", {"outcome": label}
        )
        return value or 0.0


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_an_offer_fans_out_and_its_deadline_sends_the_channel_back() -> None:
    world = World()
    world.offer()
    assert all(len(sink.events) == 1 for sink in world.sinks.values())
    world.clock.advance(0.5)
    await settle()
    assert world.gateway.resumed == [("chan-1", Verdict.TIMEOUT)]
    assert world.outcome("timeout") == 1
    assert world.presenter._invocations  # still presented as native's for the grace
    world.clock.advance(RELEASE_GRACE)
    assert not world.presenter._invocations


async def test_a_taken_hand_over_then_the_winners_stasis_start_needs_no_watchdog() -> None:
    world = World()
    world.offer()
    assert await world.claim() is ClaimOutcome.WON
    assert world.gateway.hand_overs == [("chan-1", "alpha")]
    assert world.core.get("chan-1").state is State.AWAITING_SESSION  # type: ignore[union-attr]
    world.executor.execute(world.core.session_started("chan-1", "alpha", 100.3))
    assert world.clock.pending() == []  # the watchdog is withdrawn
    assert world.outcome("claimed") == 1 and world.outcome("failed") == 0


async def test_a_lost_hand_over_answer_with_the_channel_still_parked_is_failed() -> None:
    world = World()
    world.offer()

    async def lost() -> HandOverResult:
        raise UpstreamTimeout("Asterisk did not answer over the broadcast socket in time")

    world.gateway.answer = lost
    world.gateway.parked_answers = [True]
    await world.claim()
    assert world.gateway.resumed == [("chan-1", Verdict.FAILED)]
    assert world.core.get("chan-1") is None and world.outcome("failed") == 1


async def test_a_lost_hand_over_answer_with_the_channel_gone_from_the_app_was_taken() -> None:
    world = World()
    world.offer()

    async def lost() -> HandOverResult:
        raise UpstreamTimeout("late")

    world.gateway.answer = lost
    world.gateway.parked_answers = [False]
    await world.claim()
    assert world.gateway.resumed == []
    assert world.core.get("chan-1").state is State.AWAITING_SESSION  # type: ignore[union-attr]


async def test_a_lost_hand_over_answer_asterisk_cannot_explain_is_failed() -> None:
    world = World()
    world.offer()

    async def lost() -> HandOverResult:
        raise UpstreamTimeout("late")

    world.gateway.answer = lost
    world.gateway.parked_answers = [ProxyError("unreachable", 502)]
    await world.claim()
    assert world.gateway.resumed == [("chan-1", Verdict.FAILED)]


async def test_a_winner_gone_before_the_hand_over_gets_failed() -> None:
    world = World()
    world.offer()
    world.registry.unregister(world.sinks["alpha"], ["alpha"])
    await world.claim()
    assert world.gateway.hand_overs == []
    assert world.gateway.resumed == [("chan-1", Verdict.FAILED)]


async def test_the_watchdog_sends_back_a_channel_that_never_reached_the_winner() -> None:
    world = World()
    world.offer()
    await world.claim()
    world.gateway.parked_answers = [True]
    world.clock.advance(HANDOVER_WATCHDOG)
    await settle()
    assert world.gateway.resumed == [("chan-1", Verdict.FAILED)]
    assert world.core.get("chan-1") is None and world.outcome("failed") == 1


async def test_the_watchdog_ends_a_session_the_winner_never_received() -> None:
    world = World()
    world.offer()
    await world.claim()
    world.gateway.parked_answers = [False]
    world.clock.advance(HANDOVER_WATCHDOG)
    await settle()
    assert world.gateway.resumed == []
    assert world.core.get("chan-1") is None and world.outcome("failed") == 1


async def test_a_channel_whose_return_is_in_flight_is_not_an_orphan() -> None:
    world = World()
    world.offer()
    release = asyncio.Event()

    async def slow_resume(channel_id: str, invocation: Invocation, verdict: Verdict) -> bool:
        await release.wait()
        return True

    world.gateway.resume = slow_resume  # type: ignore[method-assign]
    world.clock.advance(0.5)
    await settle()
    assert world.executor.returning == {"chan-1"}
    release.set()
    await settle()
    assert world.executor.returning == set()


async def test_stop_cancels_every_timer() -> None:
    world = World()
    world.offer()
    await world.executor.stop(0.1)
    assert world.clock.pending() == []

"""Recovery and the sweep with a fake channel gateway: a failed return picked up by the
sweep (found unknown twice in a row), claimed channels gone, a taken-over application."""

from __future__ import annotations

import asyncio

from ari_broadcast_proxy.broadcast.core import SWEEP_INTERVAL, SweepRule, Verdict
from ari_broadcast_proxy.broadcast.recovery import Parked, Recovery

from .test_executor import World, settle


def parked(world: World) -> Parked:
    """The server's broadcast application as the fake gateway lists it."""
    return lambda: world.gateway.channels_in("broadcast")


def recovery(world: World, ready: list[bool] | None = None) -> Recovery:
    state = ready if ready is not None else [True]
    return Recovery(
        world.core,
        world.executor,
        world.gateway,  # type: ignore[arg-type]
        world.metrics,
        world.clock,
        lambda: state[0],
    )


async def test_after_connecting_unknown_parked_channels_go_back() -> None:
    world = World()
    world.offer("known")
    world.gateway.parked_now = ["known", "left-over"]
    await recovery(world).recover(parked(world))
    await settle()
    assert world.gateway.resumed == [("left-over", Verdict.TIMEOUT)]


async def test_a_failed_return_is_retried_by_the_sweep_once_found_twice() -> None:
    world = World()
    world.offer()
    world.gateway.resume_result = False  # every retry failed: the channel stays parked
    world.clock.advance(0.5)
    await settle()
    assert world.gateway.resumed == [("chan-1", Verdict.TIMEOUT)]
    assert world.executor.returning == set()
    world.gateway.parked_now = ["chan-1"]
    sweeper, rule = recovery(world), SweepRule()
    await sweeper.sweep(rule, parked(world))
    await settle()
    assert len(world.gateway.resumed) == 1  # once: it may be a call entering
    world.gateway.resume_result = True
    await sweeper.sweep(rule, parked(world))
    await settle()
    assert world.gateway.resumed[1:] == [("chan-1", Verdict.TIMEOUT)]


async def test_the_sweep_leaves_a_taken_over_application_alone() -> None:
    world = World()
    world.gateway.parked_now = ["theirs"]
    sweeper, rule = recovery(world, ready=[False]), SweepRule()
    await sweeper.sweep(rule, parked(world))
    await sweeper.sweep(rule, parked(world))
    await settle()
    assert world.gateway.resumed == []


async def test_the_sweep_ends_claimed_broadcasts_whose_channel_is_gone() -> None:
    world = World()
    world.offer("gone")
    world.offer("alive")
    await world.claim("gone")
    await world.claim("alive", "beta")
    world.executor.execute(world.core.session_started("gone", "alpha", 100.3))
    world.gateway.live = {"alive"}
    await recovery(world).sweep(SweepRule(), parked(world))
    assert world.core.get("gone") is None
    assert world.core.get("alive") is not None


async def test_the_sweep_keeps_claimed_broadcasts_when_asterisk_cannot_list() -> None:
    world = World()
    world.offer()
    await world.claim()
    world.gateway.live = None
    await recovery(world).sweep(SweepRule(), parked(world))
    assert world.core.get("chan-1") is not None


async def test_run_recovers_then_sweeps_every_interval() -> None:
    world = World()
    world.gateway.parked_now = ["left-over"]
    task = asyncio.create_task(recovery(world).run(parked(world)))
    await settle()
    task.cancel()
    assert world.gateway.resumed[0] == ("left-over", Verdict.TIMEOUT)
    assert world.clock.slept and world.clock.slept[0] == SWEEP_INTERVAL

"""The claim state machine, driven by scripted inputs and a fake clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ari_broadcast_proxy.broadcast.core import (
    HANDOVER_WATCHDOG,
    LINGER,
    RELEASE_GRACE,
    Accepted,
    ArmTimer,
    Broadcast,
    BroadcastCore,
    CancelTimer,
    ClaimOutcome,
    Command,
    Forget,
    HandOver,
    HandOverAnswer,
    IllegalTransition,
    LocateChannel,
    Location,
    Outcome,
    Report,
    ResumeDialplan,
    SendCallBroadcast,
    SendCallClaimed,
    State,
    SweepRule,
    TimerKind,
    Verdict,
)

APPS = ["alpha", "beta", "gamma"]


def verdicts(commands: list[Command]) -> list[Verdict]:
    return [c.verdict for c in commands if isinstance(c, ResumeDialplan)]


def core_broadcast(commands: list[Command]) -> Broadcast[str]:
    return next(c.broadcast for c in commands if isinstance(c, ResumeDialplan))


def offered(
    notify: bool = False, timeout_ms: int = 500, apps: list[str] = APPS
) -> BroadcastCore[str]:
    core: BroadcastCore[str] = BroadcastCore(random.Random(7))
    core.offer("chan-1", "ctx", apps, timeout_ms, notify, now=100.0)
    return core


def test_offer_sends_one_broadcast_to_every_recipient_and_arms_the_deadline() -> None:
    core: BroadcastCore[str] = BroadcastCore(random.Random(1))
    commands = core.offer("chan-1", "ctx", APPS, 1500, False, now=10.0)
    # The deadline first: a fan-out that fails cannot leave the call without a timeout.
    assert [type(c) for c in commands] == [ArmTimer, SendCallBroadcast]
    arm, send = commands
    assert isinstance(send, SendCallBroadcast) and sorted(send.apps) == APPS
    assert arm == ArmTimer("chan-1", 11.5)
    assert core.get("chan-1").state is State.OFFERED


def test_order_is_shuffled_per_call() -> None:
    core: BroadcastCore[str] = BroadcastCore(random.Random(3))
    apps = [f"app{i}" for i in range(8)]
    orders = set()
    for n in range(20):
        send = core.offer(f"c{n}", "ctx", apps, 500, False, now=0.0)[1]
        assert isinstance(send, SendCallBroadcast)
        orders.add(send.apps)
    assert len(orders) > 10


def test_no_recipient_still_waits_the_full_timeout() -> None:
    core: BroadcastCore[str] = BroadcastCore()
    commands = core.offer("chan-1", "ctx", [], 700, False, now=1.0)
    assert commands == [ArmTimer("chan-1", 1.7)]
    assert verdicts(core.expire("chan-1", now=1.7)) == [Verdict.TIMEOUT]


def test_first_claim_wins_then_every_claim_conflicts() -> None:
    core = offered()
    outcome, commands = core.claim("chan-1", "beta", now=100.1)
    assert outcome is ClaimOutcome.WON
    assert [type(c) for c in commands] == [CancelTimer, HandOver]
    assert commands[1].winner == "beta"
    for app in APPS:  # the winner included, as native
        assert core.claim("chan-1", app, now=100.2) == (ClaimOutcome.CONFLICT, [])


def test_notify_claimed_adds_call_claimed() -> None:
    core = offered(notify=True)
    _, commands = core.claim("chan-1", "alpha", now=100.1)
    assert isinstance(commands[-1], SendCallClaimed) and commands[-1].winner == "alpha"


def test_claim_by_an_app_that_was_not_offered_is_refused_and_the_race_goes_on() -> None:
    core = offered(apps=["alpha"])
    assert core.claim("chan-1", "intruder", now=100.1) == (ClaimOutcome.NOT_OFFERED, [])
    assert core.claim("chan-1", "alpha", now=100.2)[0] is ClaimOutcome.WON


def test_unknown_channel_is_not_found() -> None:
    assert offered().claim("other", "alpha", now=0)[0] is ClaimOutcome.NOT_FOUND


def test_timeout_resumes_with_timeout_and_later_claims_are_not_found() -> None:
    core = offered()
    commands = core.expire("chan-1", now=100.5)
    assert commands == [
        Report("chan-1", Outcome.TIMEOUT),
        CancelTimer("chan-1"),
        ArmTimer("chan-1", 100.5 + RELEASE_GRACE, TimerKind.GRACE),
        ResumeDialplan(core_broadcast(commands), Verdict.TIMEOUT),
    ]
    assert core.claim("chan-1", "alpha", now=100.6)[0] is ClaimOutcome.NOT_FOUND


def test_claim_after_deadline_but_before_the_verdict_still_wins() -> None:
    core = offered()
    assert core.claim("chan-1", "alpha", now=100.9)[0] is ClaimOutcome.WON
    assert core.expire("chan-1", now=101.0) == []  # the stale timer is ignored


def test_timer_firing_early_is_a_bug() -> None:
    core = offered(timeout_ms=5000)
    with pytest.raises(IllegalTransition):
        core.expire("chan-1", now=100.1)


def test_hangup_during_broadcast_ends_it_at_once() -> None:
    core = offered()
    assert core.channel_left("chan-1", now=100.3) == [
        Report("chan-1", Outcome.HANGUP),
        CancelTimer("chan-1"),
        ArmTimer("chan-1", 100.3 + RELEASE_GRACE, TimerKind.GRACE),
    ]
    assert core.claim("chan-1", "alpha", now=100.1)[0] is ClaimOutcome.NOT_FOUND
    assert core.expire("chan-1", now=100.5) == []


def test_leaving_after_the_claim_is_the_hand_over_itself() -> None:
    core = offered()
    core.claim("chan-1", "alpha", now=100.1)
    assert core.channel_left("chan-1", now=100.3) == []
    assert core.claim("chan-1", "beta", now=100.2)[0] is ClaimOutcome.CONFLICT


def test_conflict_lasts_until_the_winners_session_ends() -> None:
    core = offered()
    core.claim("chan-1", "alpha", now=100.1)
    assert core.session_started("chan-1", "beta", 100.3) == []  # not the winner
    assert core.session_started("chan-1", "alpha", 100.3) == [
        Report("chan-1", Outcome.CLAIMED, "alpha")
    ]
    assert core.get("chan-1").state is State.IN_SESSION and core.in_session("chan-1")
    assert not core.is_locked("chan-1")
    assert core.session_started("chan-1", "alpha", 100.3) == []  # only the first StasisStart counts
    assert core.claim("chan-1", "beta", now=103)[0] is ClaimOutcome.CONFLICT
    assert core.session_ended("chan-1", now=104) == [
        ArmTimer("chan-1", 104 + RELEASE_GRACE, TimerKind.GRACE)
    ]
    assert core.claimed_count == 0
    assert core.claim("chan-1", "beta", now=105)[0] is ClaimOutcome.NOT_FOUND


def test_failed_hand_over_resumes_with_failed() -> None:
    core = offered()
    core.claim("chan-1", "alpha", now=100.1)
    commands = core.handover_failed("chan-1", channel_gone=False, now=100.3)
    assert verdicts(commands) == [Verdict.FAILED]
    assert any(isinstance(c, Forget) for c in commands)
    assert core.claimed_count == 0
    assert core.get("chan-1") is None


def test_failed_hand_over_of_a_gone_channel_needs_no_dialplan() -> None:
    core = offered()
    core.claim("chan-1", "alpha", now=100.1)
    assert verdicts(core.handover_failed("chan-1", channel_gone=True, now=100.3)) == []


def test_hand_over_failure_without_a_claim_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        offered().handover_failed("chan-1", channel_gone=False, now=100.3)


def test_repeat_broadcast_on_the_same_channel_starts_fresh() -> None:
    core = offered()
    core.claim("chan-1", "alpha", now=100.1)
    commands = core.offer("chan-1", "ctx2", APPS, 500, False, now=200.0)
    assert isinstance(commands[1], SendCallBroadcast)
    assert core.get("chan-1").state is State.OFFERED
    assert core.claim("chan-1", "beta", now=200.1)[0] is ClaimOutcome.WON


def test_offering_a_channel_already_on_offer_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        offered().offer("chan-1", "ctx", APPS, 500, False, now=100.2)


def test_drain_sends_offered_channels_back_and_keeps_claimed_ones() -> None:
    core: BroadcastCore[str] = BroadcastCore()
    core.offer("a", "ctx", APPS, 500, False, now=0)
    core.offer("b", "ctx", APPS, 500, False, now=0)
    core.claim("b", "alpha", now=0.1)
    commands = core.drain()
    assert [type(c) for c in commands] == [CancelTimer, ResumeDialplan]
    assert commands[1].broadcast.channel_id == "a"
    assert core.get("b") is not None


# -- ended broadcasts: late claims answered here for LINGER seconds ---------------------------


def test_a_channel_never_offered_is_not_the_cores() -> None:
    assert not offered().knows("other", now=100.1)


@pytest.mark.parametrize(
    "end",
    [
        lambda core: core.expire("chan-1", now=100.5),
        lambda core: core.channel_left("chan-1", now=100.5),
        lambda core: (
            core.claim("chan-1", "alpha", now=100.2),
            core.session_started("chan-1", "alpha", 100.3),
            core.session_ended("chan-1", now=100.5),
        ),
        lambda core: (
            core.claim("chan-1", "alpha", now=100.2),
            core.handover_failed("chan-1", channel_gone=False, now=100.5),
        ),
    ],
    ids=["timeout", "hangup", "session ended", "hand-over failed"],
)
def test_an_ended_broadcast_answers_late_claims_for_linger_seconds(
    end: Callable[[BroadcastCore[str]], object],
) -> None:
    core = offered()
    assert core.knows("chan-1", now=100.1)
    end(core)
    assert core.knows("chan-1", now=100.5 + LINGER - 0.01)
    assert core.claim("chan-1", "beta", now=100.6)[0] is ClaimOutcome.NOT_FOUND
    assert not core.knows("chan-1", now=100.5 + LINGER)


def test_ended_broadcasts_are_forgotten_as_time_passes() -> None:
    core: BroadcastCore[str] = BroadcastCore()
    for n in range(1000):
        core.offer(f"c{n}", "ctx", APPS, 500, False, now=n / 100)
        core.expire(f"c{n}", now=n / 100 + 0.5)
    late = 1000 / 100 + 0.5 + LINGER
    core.offer("last", "ctx", APPS, 500, False, now=late)
    core.expire("last", now=late + 0.5)  # ending one prunes the memory of the others
    assert not any(core.knows(f"c{n}", now=late + 0.5) for n in range(1000))
    assert len(core._ended) == 1


def test_a_channel_offered_again_is_on_offer_not_ended() -> None:
    core = offered()
    core.expire("chan-1", now=100.5)
    core.offer("chan-1", "ctx", APPS, 500, False, now=101.0)
    assert core.claim("chan-1", "alpha", now=101.1)[0] is ClaimOutcome.WON


# -- random interleavings ---------------------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("claim"), st.sampled_from([*APPS, "intruder"])),
    st.tuples(st.just("expire"), st.none()),
    st.tuples(st.just("left"), st.none()),
    st.tuples(st.just("started"), st.sampled_from(APPS)),
    st.tuples(st.just("answer"), st.sampled_from(list(HandOverAnswer))),
    st.tuples(st.just("located"), st.sampled_from(list(Location))),
    st.tuples(st.just("watchdog"), st.none()),
    st.tuples(st.just("ended"), st.none()),
    st.tuples(st.just("failed"), st.none()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=12))
def test_any_interleaving_has_at_most_one_winner_and_one_verdict(
    steps: list[tuple[str, Any]],
) -> None:
    core = offered()
    now = 100.0
    winners, verdicts = [], []
    for kind, app in steps:
        now += 0.2
        broadcast = core.get("chan-1")
        if kind == "claim":
            outcome, commands = core.claim("chan-1", app, now)
            if outcome is ClaimOutcome.WON:
                winners.append(app)
            if broadcast is None:
                assert outcome is ClaimOutcome.NOT_FOUND
        elif kind == "expire":
            commands = core.expire("chan-1", max(now, 100.5))
        elif kind == "left":
            commands = core.channel_left("chan-1", now)
        elif kind == "started":
            commands = core.session_started("chan-1", app, now)
        elif kind in ("answer", "located"):
            if broadcast is None:
                continue
            if kind == "answer":
                commands = core.handover_answered(broadcast, app, "why", now)
            else:
                commands = core.located(broadcast, app, now)
        elif kind == "watchdog":
            commands = core.timer_fired(TimerKind.WATCHDOG, "chan-1", now)
        elif kind == "ended":
            commands = core.session_ended("chan-1", now)
        else:
            if broadcast is None or broadcast.state is State.OFFERED:
                with pytest.raises(IllegalTransition):
                    core.handover_failed("chan-1", channel_gone=False, now=now)
                continue
            commands = core.handover_failed("chan-1", channel_gone=False, now=now)
        verdicts += [c.verdict for c in commands if isinstance(c, ResumeDialplan)]
        current = core.get("chan-1")
        assert core.claimed_count == int(current is not None and current.state is not State.OFFERED)
    assert len(winners) <= 1
    assert "intruder" not in winners
    assert len(verdicts) <= 1
    if winners:
        assert Verdict.TIMEOUT not in verdicts


# -- the hand-over: Asterisk's answer, the lost answer, the watchdog ---------------------------


def claimed(winner: str = "alpha") -> tuple[BroadcastCore[str], Broadcast[str]]:
    core = offered()
    core.claim("chan-1", winner, now=100.1)
    broadcast = core.get("chan-1")
    assert broadcast is not None and broadcast.state is State.HANDING_OVER
    return core, broadcast


def test_a_taken_hand_over_arms_the_watchdog_until_the_winners_stasis_start() -> None:
    core, broadcast = claimed()
    assert core.is_locked("chan-1") and not core.in_session("chan-1")
    commands = core.handover_answered(broadcast, HandOverAnswer.DONE, "done", now=100.2)
    assert commands == [
        Accepted(broadcast),
        ArmTimer("chan-1", 100.2 + HANDOVER_WATCHDOG, TimerKind.WATCHDOG),
    ]
    assert broadcast.state is State.AWAITING_SESSION
    assert core.session_started("chan-1", "alpha", 100.3) == [
        Report("chan-1", Outcome.CLAIMED, "alpha"),
        CancelTimer("chan-1", TimerKind.WATCHDOG),
    ]
    assert core.timer_fired(TimerKind.WATCHDOG, "chan-1", now=105.2) == []  # stale


def test_the_winners_stasis_start_before_asterisks_answer_needs_no_watchdog() -> None:
    core, broadcast = claimed()
    core.session_started("chan-1", "alpha", 100.3)
    assert core.handover_answered(broadcast, HandOverAnswer.DONE, "", 100.3) == [
        Accepted(broadcast)
    ]
    assert core.handover_answered(broadcast, HandOverAnswer.FAILED, "", 100.3) == []
    assert core.in_session("chan-1")


def test_a_refused_hand_over_sends_the_channel_back_failed() -> None:
    core, broadcast = claimed()
    commands = core.handover_answered(broadcast, HandOverAnswer.FAILED, "409", now=100.2)
    assert commands == [
        Report("chan-1", Outcome.FAILED, "hand-over to 'alpha' failed: 409"),
        Forget(broadcast),
        ResumeDialplan(broadcast, Verdict.FAILED),
    ]
    assert core.get("chan-1") is None and core.claimed_count == 0


def test_a_hand_over_of_a_channel_gone_ends_without_the_dialplan() -> None:
    core, broadcast = claimed()
    commands = core.handover_answered(broadcast, HandOverAnswer.CHANNEL_GONE, "gone", 100.2)
    assert verdicts(commands) == [] and Forget(broadcast) in commands
    assert core.get("chan-1") is None


def test_a_lost_answer_asks_where_the_channel_is() -> None:
    core, broadcast = claimed()
    commands = core.handover_answered(broadcast, HandOverAnswer.UNKNOWN, "timed out", 100.2)
    assert commands == [LocateChannel(broadcast, ask_exists=True)]
    assert broadcast.state is State.CONFIRMING
    assert core.claim("chan-1", "beta", now=100.3)[0] is ClaimOutcome.CONFLICT


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (Location.PARKED, [Verdict.FAILED]),
        (Location.UNKNOWN, [Verdict.FAILED]),
        (Location.GONE, []),
    ],
)
def test_a_lost_answer_with_the_channel_not_with_the_winner_fails(
    location: Location, expected: list[Verdict]
) -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.UNKNOWN, "timed out", 100.2)
    commands = core.located(broadcast, location, now=100.4)
    assert verdicts(commands) == expected
    assert Report("chan-1", Outcome.FAILED, "hand-over to 'alpha' failed: timed out") in commands
    assert core.get("chan-1") is None


def test_a_lost_answer_with_the_channel_elsewhere_was_taken() -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.UNKNOWN, "timed out", 100.2)
    commands = core.located(broadcast, Location.ELSEWHERE, now=100.4)
    assert commands[-1] == ArmTimer("chan-1", 100.4 + HANDOVER_WATCHDOG, TimerKind.WATCHDOG)
    assert broadcast.state is State.AWAITING_SESSION


def test_a_lost_answer_and_the_winners_stasis_start_meanwhile_is_done() -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.UNKNOWN, "timed out", 100.2)
    core.session_started("chan-1", "alpha", 100.3)
    assert core.located(broadcast, Location.PARKED, now=100.4) == []
    assert core.in_session("chan-1")


def test_the_watchdog_sends_back_a_channel_that_never_left() -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.DONE, "done", now=100.2)
    fired = core.timer_fired(TimerKind.WATCHDOG, "chan-1", now=105.2)
    assert fired == [LocateChannel(broadcast, ask_exists=False)]
    assert broadcast.state is State.CHECKING
    commands = core.located(broadcast, Location.PARKED, now=105.3)
    assert verdicts(commands) == [Verdict.FAILED]
    never_left = "hand-over to 'alpha' failed: the channel never left"
    assert Report("chan-1", Outcome.FAILED, never_left) in commands


@pytest.mark.parametrize("location", [Location.ELSEWHERE, Location.GONE, Location.UNKNOWN])
def test_the_watchdog_ends_a_session_the_winner_never_received(location: Location) -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.DONE, "done", now=100.2)
    core.timer_fired(TimerKind.WATCHDOG, "chan-1", now=105.2)
    commands = core.located(broadcast, location, now=105.3)
    assert commands == [
        Report("chan-1", Outcome.FAILED, "'alpha' never received the channel (gone?)"),
        ArmTimer("chan-1", 105.3 + RELEASE_GRACE, TimerKind.GRACE),
    ]
    assert core.claim("chan-1", "beta", now=105.4)[0] is ClaimOutcome.NOT_FOUND


def test_a_move_that_failed_on_asterisk_sends_the_channel_back_failed() -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.DONE, "done", now=100.2)
    commands = core.move_failed("chan-1", "alpha", now=100.3)
    assert CancelTimer("chan-1", TimerKind.WATCHDOG) in commands
    assert verdicts(commands) == [Verdict.FAILED]


def test_a_move_failure_after_the_winners_stasis_start_is_ignored() -> None:
    core, _ = claimed()
    core.session_started("chan-1", "alpha", 100.3)
    assert core.move_failed("chan-1", "alpha", now=100.3) == []


def test_answers_for_a_broadcast_replaced_by_a_new_one_are_ignored() -> None:
    core, broadcast = claimed()
    core.handover_answered(broadcast, HandOverAnswer.DONE, "done", now=100.2)
    commands = core.offer("chan-1", "ctx2", APPS, 500, False, now=101.0)
    assert commands[0] == CancelTimer("chan-1", TimerKind.WATCHDOG)  # failover in the dialplan
    assert core.handover_answered(broadcast, HandOverAnswer.FAILED, "late", 101.1) == []
    assert core.located(broadcast, Location.PARKED, 101.1) == []
    assert core.channel_gone(broadcast, 101.1) == []
    assert core.get("chan-1").state is State.OFFERED


# -- the release grace, the sweep ---------------------------------------------------------------


def test_the_release_grace_forgets_the_presentation_then() -> None:
    core, broadcast = claimed()
    core.session_started("chan-1", "alpha", 100.3)
    core.session_ended("chan-1", now=104.0)
    assert core.timer_fired(TimerKind.GRACE, "chan-1", now=109.0) == [Forget(broadcast)]
    assert core.timer_fired(TimerKind.GRACE, "chan-1", now=109.1) == []


def test_a_channel_offered_again_within_the_grace_cancels_it() -> None:
    core = offered()
    core.expire("chan-1", now=100.5)
    commands = core.offer("chan-1", "ctx", APPS, 500, False, now=101.0)
    assert commands[0] == CancelTimer("chan-1", TimerKind.GRACE)
    assert core.timer_fired(TimerKind.GRACE, "chan-1", now=105.5) == []


def test_a_sweep_ends_a_claimed_broadcast_whose_channel_is_gone() -> None:
    core, broadcast = claimed()
    core.session_started("chan-1", "alpha", 100.3)
    assert core.claimed() == [broadcast]
    assert core.channel_gone(broadcast, now=130.0) == [
        ArmTimer("chan-1", 130.0 + RELEASE_GRACE, TimerKind.GRACE)
    ]
    assert core.claimed() == [] and core.claimed_count == 0


def test_orphans_are_the_parked_channels_neither_known_nor_returning() -> None:
    core = offered()
    assert core.orphans(["chan-1", "x", "y"], returning={"y"}) == {"x"}


def test_the_sweep_sends_back_a_channel_found_unknown_twice_in_a_row() -> None:
    rule = SweepRule()
    assert rule.sweep({"a", "b"}) == set()  # may be a call entering as the list was read
    assert rule.sweep({"a", "c"}) == {"a"}  # b left meanwhile; c is new
    assert rule.sweep({"c"}) == {"c"}
    assert rule.sweep({"c"}) == set()  # sent back once; suspected afresh
    assert rule.sweep(set()) == set()


def test_a_late_answer_for_a_replaced_hand_over_leaves_the_new_offer_alone() -> None:
    core, broadcast = claimed()  # Asterisk's answer still awaited
    core.offer("chan-1", "ctx2", APPS, 500, False, now=101.0)
    assert core.handover_answered(broadcast, HandOverAnswer.FAILED, "late", 101.1) == []
    assert core.handover_answered(broadcast, HandOverAnswer.UNKNOWN, "late", 101.1) == []
    assert core.get("chan-1").state is State.OFFERED


# -- replicas: a mirror of another replica's broadcast, and taking claims over ---------------


def test_a_mirrored_offer_keeps_the_deadline_it_was_given() -> None:
    core: BroadcastCore[str] = BroadcastCore(random.Random(7))
    commands = core.offer("chan-1", "ctx", APPS, 5000, False, now=100.0, deadline=101.5)
    assert ArmTimer("chan-1", 101.5) in commands
    assert core.expire("chan-1", 101.5)  # its verdict at that deadline, not at 105


def test_dismiss_ends_a_mirror_in_any_state_without_acting() -> None:
    core = offered()
    core.claim("chan-1", "alpha", 100.1)
    commands = core.dismiss("chan-1", 100.2)
    assert not [c for c in commands if isinstance(c, ResumeDialplan | HandOver | Report)]
    assert core.get("chan-1") is None
    assert core.claim("chan-1", "beta", 100.3)[0] is ClaimOutcome.NOT_FOUND
    assert core.dismiss("chan-1", 100.4) == []


def test_the_winners_stasis_start_before_word_of_the_claim_takes_the_claim_as_made() -> None:
    core = offered(notify=True)
    commands = core.session_started("chan-1", "beta", 100.2, mirror=True)
    assert core.in_session("chan-1")
    assert not [c for c in commands if isinstance(c, HandOver)]  # Asterisk moved it already
    assert [c.winner for c in commands if isinstance(c, SendCallClaimed)] == ["beta"]
    assert Report("chan-1", Outcome.CLAIMED, "beta") in commands
    assert core.claim("chan-1", "beta", 100.3)[0] is ClaimOutcome.CONFLICT  # the word, late


def test_one_process_takes_no_stasis_start_on_a_call_on_offer_as_a_claim() -> None:
    core = offered()
    assert core.session_started("chan-1", "beta", 100.2) == []
    assert core.claim("chan-1", "beta", 100.3)[0] is ClaimOutcome.WON


def test_a_stasis_start_of_an_app_not_offered_the_call_is_not_a_claim() -> None:
    core = offered(apps=["alpha"])
    assert core.session_started("chan-1", "beta", 100.2, mirror=True) == []
    assert not core.in_session("chan-1")


@pytest.mark.parametrize(
    ("location", "expect"),
    [
        (Location.PARKED, "hand over"),
        (Location.ELSEWHERE, "taken"),
        (Location.UNKNOWN, "taken"),
        (Location.GONE, "ended"),
    ],
)
def test_taking_claims_over_locates_each_first(location: Location, expect: str) -> None:
    core = offered()
    core.claim("chan-1", "alpha", 100.1)  # another replica led: its hand-over may be written
    broadcast = core.get("chan-1")
    assert broadcast is not None
    assert core.taken_over() == [LocateChannel(broadcast, ask_exists=True)]
    assert broadcast.state is State.RELOCATING
    after = core.located(broadcast, location, 100.2)
    if expect == "hand over":
        assert after == [HandOver(broadcast, "alpha")]
        assert broadcast.state is State.HANDING_OVER
    elif expect == "taken":
        assert broadcast.state is State.AWAITING_SESSION
        assert any(isinstance(c, ArmTimer) and c.kind is TimerKind.WATCHDOG for c in after)
    else:
        assert core.get("chan-1") is None
        assert [c.outcome for c in after if isinstance(c, Report)] == [Outcome.FAILED]
        assert verdicts(after) == []


def test_taking_over_leaves_offers_and_sessions_alone() -> None:
    core = offered()
    core.offer("chan-2", "ctx", APPS, 500, False, now=100.0)
    core.claim("chan-2", "beta", 100.1)
    core.session_started("chan-2", "beta", 100.2)
    assert core.taken_over() == []

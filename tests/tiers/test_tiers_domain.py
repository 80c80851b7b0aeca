"""Unit tests of the pure tier rules: earning, refunds, caps, windows, downgrades, overrides, effects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from loyalty_tiers import domain
from loyalty_tiers.domain import (
    Carry,
    DowngradeNotice,
    Milestone,
    Snapshot,
    TierChange,
    balance_at,
    derive_ledger,
    diff,
    evaluate,
    expiring_soon,
    fact_from_json,
    fact_to_json,
    next_actions,
    process,
    recalculate,
)
from tiers_factories import (
    BASE_PROGRAM,
    T0,
    at,
    community,
    grant,
    program,
    purchase,
    refund,
    review,
    revoke,
    survey,
)


def points_by_id(entries: list) -> dict[str, int]:
    return {e.entry_id: e.points for e in entries}


# --- earning -------------------------------------------------------------------------------------


def test_purchase_points_per_currency_unit_with_multiplier_and_exclusions() -> None:
    facts = [purchase("p1", at(), "o1",
                      ("a", "tools", 2, 1050),        # 21.00 EUR -> 21
                      ("b", "power_tools", 1, 9999),  # 99.99 EUR x1.5 = 149.985 -> 149
                      ("c", "delivery_fee", 1, 500),  # excluded
                      ("d", "gift_card", 1, 5000))]   # excluded
    [entry] = derive_ledger(program(), facts)
    assert entry.points == 21 + 149
    assert "delivery_fee excluded" in entry.rule and "gift_card excluded" in entry.rule
    assert entry.expires_at == at(365)


def test_zero_decimal_currency_uses_major_units() -> None:
    [entry] = derive_ledger(program(), [purchase("p1", at(), "o1", ("a", "tools", 1, 1500), currency="JPY")])
    assert entry.points == 1500


def test_partial_refunds_by_line_reverse_exactly_what_the_line_earned() -> None:
    # Line a earns 7 points over 3 units: refunds of 1 + 1 + 1 unit reverse 2 + 2 + 3 = 7, never 6 or 9.
    facts = [
        purchase("p1", at(), "o1", ("a", "tools", 3, 234), ("b", "tools", 1, 5000)),
        refund("r1", at(1), "o1", ("a", 1)),
        refund("r2", at(2), "o1", ("a", 1)),
        refund("r3", at(3), "o1", ("a", 1)),
    ]
    got = points_by_id(derive_ledger(program(), facts))
    assert got == {"p1": 57, "r1": -2, "r2": -2, "r3": -3}


def test_full_refund_after_partial_reverses_only_the_rest_and_overrefund_is_clamped() -> None:
    facts = [
        purchase("p1", at(), "o1", ("a", "tools", 2, 1000), ("b", "tools", 1, 3000)),
        refund("r1", at(1), "o1", ("a", 5), ("zz", 1)),  # more units than bought, and an unknown line
        refund("r2", at(2), "o1", full=True),
    ]
    entries = derive_ledger(program(), facts)
    got = points_by_id(entries)
    assert got == {"p1": 50, "r1": -20, "r2": -30}
    assert "zz: unknown line" in entries[1].rule
    assert balance_at(entries, at(3)) == 0


def test_refund_arriving_before_its_purchase_gives_the_in_order_ledger() -> None:
    p = purchase("p1", at(), "o1")
    r = refund("r1", at(2), "o1", full=True)
    only_refund = derive_ledger(program(), [r])
    assert only_refund[0].points == 0 and "not seen yet" in only_refund[0].rule
    assert derive_ledger(program(), [r, p]) == derive_ledger(program(), [p, r])
    assert points_by_id(derive_ledger(program(), [r, p])) == {"p1": 100, "r1": -100}


def test_refund_dated_before_its_purchase_counts_from_the_purchase() -> None:
    entries = derive_ledger(program(), [purchase("p1", at(5), "o1"), refund("r1", at(1), "o1", full=True)])
    refund_entry = next(e for e in entries if e.entry_id == "r1")
    assert refund_entry.counts_from == at(5)
    assert balance_at(entries, at(6)) == 0


def test_refund_after_points_expired_does_not_take_points_twice() -> None:
    entries = derive_ledger(program(), [purchase("p1", at(), "o1"), refund("r1", at(400), "o1", full=True)])
    assert balance_at(entries, at(364)) == 100
    assert balance_at(entries, at(401)) == 0  # expired at day 365; the refund's reversal expired with it


def test_duplicate_order_earns_once() -> None:
    got = points_by_id(derive_ledger(program(), [purchase("p1", at(), "o1"), purchase("p2", at(1), "o1")]))
    assert got == {"p1": 100, "p2": 0}


def test_review_rules_length_once_per_product_photo_bonus() -> None:
    facts = [
        review("v1", at(), sku="drill", text_length=50),              # too short
        review("v2", at(1), sku="drill", text_length=150, photo=True),  # 40 + 10
        review("v3", at(2), sku="drill", text_length=500),             # same product again
        review("v4", at(3), sku="saw", text_length=100),               # 40
    ]
    entries = derive_ledger(program(), facts)
    assert points_by_id(entries) == {"v1": 0, "v2": 50, "v3": 0, "v4": 40}
    assert "100 required" in entries[0].rule
    data = {**BASE_PROGRAM["earning"], "review": {"points": 40, "require_photo": True}}
    got = points_by_id(derive_ledger(program(earning=data), [review("v1", at(), photo=False)]))
    assert got == {"v1": 0}


def test_caps_per_day_and_per_month_follow_event_time_order() -> None:
    earning = {**BASE_PROGRAM["earning"], "caps": {"review": {"per_day": 60, "per_month": 100}}}
    facts = [
        review("v1", at(0, 1), sku="a"),   # 40
        review("v2", at(0, 2), sku="b"),   # 20 (day cap 60)
        review("v3", at(0, 3), sku="c"),   # 0
        review("v4", at(1), sku="d"),      # 40 (month total 100)
        review("v5", at(2), sku="e"),      # 0 (month cap)
    ]
    entries = derive_ledger(program(earning=earning), list(reversed(facts)))
    assert points_by_id(entries) == {"v1": 40, "v2": 20, "v3": 0, "v4": 40, "v5": 0}
    assert "capped from 40" in entries[1].rule
    # v3 earned nothing, so the product stays open for a later review.
    later = derive_ledger(program(earning=earning), [*facts, review("v6", at(40), sku="c")])
    assert points_by_id(later)["v6"] == 40


def test_capped_purchase_refund_reverses_only_credited_points() -> None:
    earning = {**BASE_PROGRAM["earning"], "caps": {"purchase": {"per_day": 30}}}
    facts = [purchase("p1", at(), "o1", ("a", "tools", 1, 4000), ("b", "tools", 1, 2000)),
             refund("r1", at(1), "o1", ("a", 1))]
    got = points_by_id(derive_ledger(program(earning=earning), facts))
    assert got == {"p1": 30, "r1": -20}


def test_referral_rewards_count_for_referrer_only_and_revocation_reverses_booked_points() -> None:
    facts = [
        grant("g1", at(), "rw1", role="referrer"),
        grant("g2", at(), "rw2", role="referee"),
        revoke("x1", at(5), "rw1"),
        revoke("x2", at(6), "rw1"),
        revoke("x3", at(1), "rw9"),
    ]
    entries = derive_ledger(program(), facts)
    assert points_by_id(entries) == {"g1": 60, "g2": 0, "x1": -60, "x2": 0, "x3": 0}
    earning = {**BASE_PROGRAM["earning"], "referral": {"roles": ["referrer"], "points": None}}
    assert points_by_id(derive_ledger(program(earning=earning), [grant("g1", at(), "rw1", points=77)])) == {"g1": 77}


def test_surveys_once_per_request_and_community_by_kind() -> None:
    facts = [survey("s1", at(), "rq1"), survey("s2", at(1), "rq1"), community("c1", at(), "forum_answer"),
             community("c2", at(), "dance")]
    entries = derive_ledger(program(), facts)
    assert points_by_id(entries) == {"s1": 5, "s2": 0, "c1": 3, "c2": 0}
    assert "earns no points" in next(e for e in entries if e.entry_id == "c2").rule


def test_calendar_year_and_anniversary_windows() -> None:
    calendar = program(window={"kind": "calendar_year"}, timezone="Europe/Berlin")
    [entry] = derive_ledger(calendar, [purchase("p1", datetime(2026, 6, 1, tzinfo=UTC), "o1")])
    assert entry.expires_at == datetime(2026, 12, 31, 23, 0, tzinfo=UTC)  # midnight in Berlin
    anniversary = program(window={"kind": "membership_anniversary"})
    facts = [survey("s1", datetime(2024, 2, 29, 10, tzinfo=UTC)), purchase("p1", datetime(2026, 3, 5, tzinfo=UTC))]
    entries = derive_ledger(anniversary, facts)
    assert entries[0].expires_at == datetime(2025, 2, 28, 10, tzinfo=UTC)
    assert entries[1].expires_at == datetime(2027, 2, 28, 10, tzinfo=UTC)


def test_facts_round_trip_through_json() -> None:
    facts = [purchase("p1", at(), "o1", ("a", "x", 2, 10)), refund("r1", at(), "o1", ("a", 1)), review("v", at()),
             grant("g", at(), "rw"), revoke("x", at(), "rw"), survey("s", at()), community("c", at()),
             Carry("k", at(), "maker", 2)]
    assert [fact_from_json(fact_to_json(f)) for f in facts] == facts


# --- tiers over time ---------------------------------------------------------------------------


def expert_at_t0() -> list:
    return [purchase("p1", at(), "o1", ("a", "tools", 1, 35000))]  # 350 points: expert


def test_upgrade_is_immediate_and_reason_says_why() -> None:
    p = program()
    state = evaluate(p, "c1", derive_ledger(p, expert_at_t0()), at())
    assert (p.ladder[state.tier].id, state.since, state.reason, state.points) == ("expert", at(), "threshold_reached",
                                                                                   350)
    effects, snapshot = diff(p, None, state)
    assert effects == [TierChange("novice", "expert", "up", "threshold_reached", at(), 350)]
    assert snapshot.tier == "expert"


def test_one_step_downgrade_after_grace_with_advance_notice() -> None:
    p = program()
    entries = derive_ledger(p, expert_at_t0())
    # Points expire at day 365; grace 30 days; notice 10 days before.
    before_notice = evaluate(p, "c1", entries, at(370))
    assert before_notice.pending is not None
    assert (before_notice.pending.effective_at, before_notice.pending.notice_at) == (at(395), at(385))
    assert before_notice.next_check_at == at(385)
    assert p.ladder[before_notice.tier].id == "expert"
    snap = Snapshot("expert")
    effects, snap = diff(p, snap, before_notice)
    assert effects == []
    noticed = evaluate(p, "c1", entries, at(386))
    effects, snap = diff(p, snap, noticed)
    assert effects == [DowngradeNotice("expert", "maker", at(395), 300)]
    assert diff(p, snap, evaluate(p, "c1", entries, at(387)))[0] == []  # announced once
    stepped = evaluate(p, "c1", entries, at(395))
    assert (p.ladder[stepped.tier].id, stepped.reason, stepped.since) == ("maker", "grace_expired", at(395))
    effects, snap = diff(p, snap, stepped)
    assert effects == [TierChange("expert", "maker", "down", "grace_expired", at(395), 0)]
    assert p.ladder[evaluate(p, "c1", entries, at(425)).tier].id == "novice"


def test_to_supported_and_none_policies() -> None:
    entries = derive_ledger(program(), expert_at_t0())
    to_supported = program(downgrade={"policy": "to_supported", "grace_days": 30, "notice_days": 10})
    assert to_supported.ladder[evaluate(to_supported, "c1", entries, at(395)).tier].id == "novice"
    never = program(downgrade={"policy": "none"})
    state = evaluate(never, "c1", entries, at(2000))
    assert (never.ladder[state.tier].id, state.pending, state.next_check_at) == ("expert", None, None)


def test_earning_during_grace_cancels_the_downgrade() -> None:
    p = program()
    entries = derive_ledger(p, [*expert_at_t0(), purchase("p2", at(380), "o2", ("a", "tools", 1, 30000))])
    state = evaluate(p, "c1", entries, at(500))
    assert (p.ladder[state.tier].id, state.pending) == ("expert", None)


def test_grace_zero_one_step_still_lands_on_supported_tier() -> None:
    p = program(downgrade={"policy": "one_step", "grace_days": 0})
    entries = derive_ledger(p, [purchase("p1", at(), "o1", ("a", "tools", 1, 90000))])  # guru
    assert p.ladder[evaluate(p, "c1", entries, at(365)).tier].id == "novice"


def test_override_floor_fixed_and_expiry() -> None:
    overrides = [
        {"customer_id": "vip", "mode": "floor", "tier": "expert", "reason": "founder", "starts_at": at(),
         "expires_at": at(100)},
        {"customer_id": "pinned", "mode": "fixed", "tier": "maker", "reason": "staff", "starts_at": at(),
         "expires_at": at(100)},
    ]
    p = program(overrides=overrides)
    rich = derive_ledger(p, [purchase("p1", at(1), "o1", ("a", "tools", 1, 90000))])
    assert p.ladder[evaluate(p, "vip", [], at(-1)).tier].id == "novice"  # not started yet
    floor_state = evaluate(p, "vip", [], at(1))
    assert (p.ladder[floor_state.tier].id, floor_state.reason) == ("expert", "override_floor")
    assert p.ladder[evaluate(p, "vip", rich, at(2)).tier].id == "guru"  # a floor never caps
    pinned = evaluate(p, "pinned", rich, at(2))
    assert (p.ladder[pinned.tier].id, pinned.reason) == ("maker", "override_fixed")
    # After the floor expires, the normal policy applies: grace from the expiry, then one step down.
    assert evaluate(p, "vip", [], at(50)).next_check_at == at(100)
    lapsed = evaluate(p, "vip", [], at(131))
    assert p.ladder[lapsed.tier].id == "maker"
    assert p.ladder[evaluate(p, "someone-else", [], at(1)).tier].id == "novice"


def test_milestones_once_per_tier_stint() -> None:
    p = program()
    snap = None
    emitted = []
    prices = [4000, 1500, 500, 2500]  # running totals 40, 55, 60, 85 points (maker at 100)
    for i in range(len(prices)):
        facts = [purchase(f"p{j}", at(j), f"o{j}", ("a", "tools", 1, prices[j])) for j in range(i + 1)]
        out = process(p, "c1", facts, snap, at(i))
        emitted += out.effects
        snap = out.snapshot
    assert emitted == [
        Milestone("novice", "maker", Decimal("0.5"), 55, 45),
        Milestone("novice", "maker", Decimal("0.8"), 85, 15),
    ]
    # Jumping to maker with 60 % of the way to expert announces the change and that milestone.
    out = process(p, "c1", [purchase("p9", at(10), "o9", ("a", "tools", 1, 22000))], snap, at(10))
    assert [type(e) for e in out.effects] == [TierChange, Milestone]
    assert out.effects[1] == Milestone("maker", "expert", Decimal("0.5"), 220, 80)


def test_actions_ranked_and_spend_amount() -> None:
    p = program()
    state = evaluate(p, "c1", derive_ledger(p, [purchase("p1", at(), "o1", ("a", "tools", 1, 5000))]), at())
    actions = next_actions(p, state, "EUR")
    assert [a.code for a in actions][:3] == ["referral", "review_with_photo", "spend"]
    assert (actions[0].points, actions[0].times_needed) == (60, 1)
    assert (actions[1].points, actions[1].times_needed) == (50, 1)
    assert actions[2].spend_minor == 5000 and actions[2].points == 50
    assert actions[-1].code == "community:forum_answer" and actions[-1].times_needed == 17


def test_expiring_soon_groups_by_time() -> None:
    p = program()
    entries = derive_ledger(p, [purchase("p1", at(), "o1"), purchase("p2", at(10), "o2"),
                                refund("r1", at(20), "o2", full=True), purchase("p3", at(200), "o3")])
    soon = expiring_soon(entries, at(350), 30)
    assert [(s.expires_at, s.points) for s in soon] == [(at(365), 100)]  # o2 nets to 0; o3 later


def test_recalculation_under_the_same_program_changes_nothing() -> None:
    p = program()
    facts = [*expert_at_t0(), review("v1", at(3))]
    first = process(p, "c1", facts, None, at(3))
    again = recalculate(p, "c1", facts, first.snapshot, at(3))
    assert again.effects == [] and again.new_facts == []


def test_recalculation_raising_thresholds_keeps_tier_with_grace_or_drops_immediately() -> None:
    old = program()
    facts = expert_at_t0()
    first = process(old, "c1", facts, None, at(10))
    ladder = [dict(t) for t in BASE_PROGRAM["ladder"]]
    ladder[2]["threshold"] = 500
    graceful = program(version=2, ladder=ladder)
    out = recalculate(graceful, "c1", facts, first.snapshot, at(10))
    assert [type(f) for f in out.new_facts] == [Carry]
    assert graceful.ladder[out.state.tier].id == "expert"
    assert out.state.pending is not None and out.state.pending.effective_at == at(40)
    assert out.effects == []  # no TierChanged: the tier is kept, the notice comes 10 days before day 40
    noticed = process(graceful, "c1", [*facts, *out.new_facts], out.snapshot, at(30))
    assert noticed.effects == [DowngradeNotice("expert", "maker", at(40), 150)]
    stepped = process(graceful, "c1", [*facts, *out.new_facts], noticed.snapshot, at(40))
    assert [(e.from_tier, e.to_tier) for e in stepped.effects if isinstance(e, TierChange)] == [("expert", "maker")]

    immediate = program(version=2, ladder=ladder,
                        downgrade={"policy": "one_step", "grace_days": 30, "notice_days": 10,
                                   "recalculation": "immediate"})
    out = recalculate(immediate, "c1", facts, first.snapshot, at(10))
    assert out.effects[0] == TierChange("expert", "maker", "down", "program_changed", at(), 350)


def test_timeline_uses_event_time_not_arrival() -> None:
    p = program()
    late_first = evaluate(p, "c1", derive_ledger(p, [purchase("p2", at(400), "o2"), *expert_at_t0()]), at(400))
    assert late_first.points == 100  # the day-0 purchase has already left the window at day 400
    # Expired at day 365, grace ended day 395 (one step to maker); the day-400 purchase keeps maker.
    assert (p.ladder[late_first.tier].id, late_first.since, late_first.pending) == ("maker", at(395), None)


def test_walk_balance_matches_reference_at_boundaries() -> None:
    p = program()
    entries = derive_ledger(p, expert_at_t0())
    for moment in (at(-1), at(), at(364), at(365) - timedelta(microseconds=1), at(365)):
        assert evaluate(p, "c1", entries, moment).points == balance_at(entries, moment)
    assert T0.tzinfo is not None


def test_tier_reached_between_events_is_kept_under_policy_none() -> None:
    p = program(downgrade={"policy": "none"}, window={"kind": "rolling_days", "days": 90})
    facts = [purchase("p1", at(0), "o1", ("a", "tools", 1, 5000)),
             purchase("p2", at(10), "o2", ("a", "tools", 1, 6000))]
    state = evaluate(p, "c1", derive_ledger(p, facts), at(200))
    assert (state.points, p.ladder[state.tier].id, state.since) == (0, "maker", at(10))


def test_check_timer_key_is_the_same_for_the_same_instant_in_any_offset() -> None:
    from zoneinfo import ZoneInfo

    from loyalty_tiers.handlers import timer_key

    berlin = datetime(2027, 1, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert timer_key("t", "c", berlin) == timer_key("t", "c", berlin.astimezone(UTC))


def test_several_facts_in_one_batch_announce_every_step_as_one_batch_each_would() -> None:
    """Six purchases take a new customer from novice through maker to expert. Announced step by step, the
    customer hears of both promotions and of each tier's milestone, whether the purchases arrive in one
    batch (a fast replay) or one by one (live traffic); only the state used to be batch-independent."""
    p = program(milestones=[0.5])
    facts = [purchase(f"p{i}", at(i), f"o{i}") for i in range(6)]
    one_batch = domain.process_each(p, "c", facts, None, at(6))
    snapshot, one_by_one = None, []
    for i in range(len(facts)):
        step = domain.process(p, "c", facts[: i + 1], snapshot, at(6) if i == len(facts) - 1 else at(i))
        snapshot, one_by_one = step.snapshot, one_by_one + step.effects
    assert one_batch.effects == one_by_one
    assert [(type(e).__name__, getattr(e, "to_tier", None) or getattr(e, "next_tier", None)) for e in one_by_one] == [
        ("TierChange", "maker"), ("Milestone", "expert"), ("TierChange", "expert"), ("Milestone", "guru"),
    ]
    milestone_times = [e.at for e in one_batch.effects if isinstance(e, domain.Milestone)]
    assert milestone_times == [e.at for e in one_by_one if isinstance(e, domain.Milestone)]
    assert milestone_times[0] == at(1)  # when it was reached, not when the batch was applied (at(6))
    collapsed = domain.process(p, "c", facts, None, at(6))
    assert collapsed.state == one_batch.state and collapsed.snapshot.tier == one_batch.snapshot.tier
    assert [type(e).__name__ for e in collapsed.effects] == ["TierChange", "Milestone"]  # the old behaviour

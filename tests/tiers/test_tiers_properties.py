"""Property-based tests (hypothesis) of the ledger and tier invariants listed in issue 4."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_tiers.domain import (
    Fact,
    Purchase,
    Refund,
    balance_at,
    derive_ledger,
    evaluate,
    fact_from_json,
    fact_to_json,
    process,
    recalculate,
)
from tiers_factories import BASE_PROGRAM, at, community, grant, program, purchase, refund, review, revoke, survey

CATEGORIES = ["tools", "power_tools", "delivery_fee", "garden"]
POLICIES = ["none", "one_step", "to_supported"]
WINDOWS = [{"kind": "rolling_days", "days": 90}, {"kind": "calendar_year"}, {"kind": "membership_anniversary"}]

days = st.floats(min_value=0, max_value=800, allow_nan=False).map(lambda d: round(d, 3))


@st.composite
def programs(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    caps = draw(st.sampled_from([{}, {"review": {"per_day": 60}, "purchase": {"per_month": 400}}]))
    earning = {**BASE_PROGRAM["earning"], "caps": caps}
    return program(
        earning=earning,
        window=draw(st.sampled_from(WINDOWS)),
        downgrade={"policy": draw(st.sampled_from(POLICIES)), "grace_days": draw(st.sampled_from([0, 10, 30])),
                   "notice_days": draw(st.sampled_from([0, 7]))},
    )


@st.composite
def purchases(draw: st.DrawFn, index: int) -> Purchase:
    n_lines = draw(st.integers(1, 3))
    lines = [
        (f"l{i}", draw(st.sampled_from(CATEGORIES)), draw(st.integers(1, 4)), draw(st.integers(0, 20000)))
        for i in range(n_lines)
    ]
    return purchase(f"p{index}", at(draw(days)), f"o{index}", *lines)


@st.composite
def refunds_for(draw: st.DrawFn, p: Purchase, index: int) -> Refund:
    when = at(draw(days))
    if draw(st.booleans()):
        return refund(f"r{index}", when, p.order_id, full=True)
    chosen = draw(st.lists(st.sampled_from(p.lines), min_size=1, max_size=3))
    return refund(f"r{index}", when, p.order_id, *[(ln.line_id, draw(st.integers(1, 3))) for ln in chosen])


@st.composite
def histories(draw: st.DrawFn) -> list[Fact]:
    """One customer's facts: purchases, refunds of some of them, reviews, referrals, surveys, community."""
    bought = [draw(purchases(i)) for i in range(draw(st.integers(0, 5)))]
    facts: list[Fact] = list(bought)
    for i, p in enumerate(bought):
        for j in range(draw(st.integers(0, 2))):
            facts.append(draw(refunds_for(p, i * 10 + j)))
    facts.append(refund("r-orphan", at(draw(days)), "o-unknown", full=True))
    for i in range(draw(st.integers(0, 4))):
        facts.append(review(f"v{i}", at(draw(days)), sku=draw(st.sampled_from(["drill", "saw", "glue"])),
                            text_length=draw(st.integers(0, 400)), photo=draw(st.booleans())))
    for i in range(draw(st.integers(0, 2))):
        facts.append(grant(f"g{i}", at(draw(days)), f"rw{i}", role=draw(st.sampled_from(["referrer", "referee"]))))
        if draw(st.booleans()):
            facts.append(revoke(f"x{i}", at(draw(days)), f"rw{i}"))
    for i in range(draw(st.integers(0, 2))):
        facts.append(survey(f"s{i}", at(draw(days)), request_id=f"rq{draw(st.integers(0, 1))}"))
        facts.append(community(f"c{i}", at(draw(days)), kind=draw(st.sampled_from(["forum_answer", "dance"]))))
    return facts


def latest(facts: list[Fact]) -> object:
    return max((f.occurred_at for f in facts), default=at())


@settings(max_examples=150, deadline=None)
@given(programs(), histories(), days)
def test_balance_equals_sum_of_entries_in_window(p, facts, moment) -> None:  # type: ignore[no-untyped-def]
    entries = derive_ledger(p, facts)
    when = at(moment)
    assert evaluate(p, "c1", entries, when).points == balance_at(entries, when)
    assert len(entries) == len(facts)  # one entry per source event


@settings(max_examples=150, deadline=None)
@given(programs(), st.lists(st.integers(0, 10**6), min_size=1, max_size=4).flatmap(
    lambda seeds: st.tuples(*[purchases(i) for i in range(len(seeds))])), st.data())
def test_purchases_fully_refunded_leave_no_points(p, bought, data) -> None:  # type: ignore[no-untyped-def]
    facts: list[Fact] = []
    for i, purchase_fact in enumerate(bought):
        facts.append(purchase_fact)
        if data.draw(st.booleans()):
            facts.append(refund(f"rf{i}", purchase_fact.occurred_at + timedelta(days=1), purchase_fact.order_id,
                                full=True))
        else:  # several partial refunds that together return every unit
            for j, line in enumerate(purchase_fact.lines):
                for k in range(line.quantity):
                    facts.append(refund(f"rp{i}-{j}-{k}", purchase_fact.occurred_at + timedelta(hours=j + k + 1),
                                        purchase_fact.order_id, (line.line_id, 1)))
    entries = derive_ledger(p, facts)
    assert sum(e.points for e in entries) == 0
    after_all = max(f.occurred_at for f in facts) + timedelta(seconds=1)
    assert balance_at(entries, after_all) == 0
    assert evaluate(p, "c1", entries, after_all).points == 0


@settings(max_examples=150, deadline=None)
@given(programs(), histories(), st.randoms(use_true_random=False))
def test_any_permutation_ends_in_the_same_state(p, facts, rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(facts)
    rnd.shuffle(shuffled)
    as_of = latest(facts)
    original = process(p, "c1", facts, None, as_of)  # type: ignore[arg-type]
    permuted = process(p, "c1", shuffled, None, as_of)  # type: ignore[arg-type]
    assert sorted(original.entries, key=lambda e: e.entry_id) == sorted(permuted.entries, key=lambda e: e.entry_id)
    assert original.state == permuted.state
    assert original.effects == permuted.effects


@settings(max_examples=100, deadline=None)
@given(programs(), histories(), st.randoms(use_true_random=False))
def test_arrival_order_one_by_one_ends_where_the_batch_ends(p, facts, rnd) -> None:  # type: ignore[no-untyped-def]
    arrival = list(facts)
    rnd.shuffle(arrival)
    seen: list[Fact] = []
    snapshot = None
    as_of = at(-1)
    for fact in arrival:
        seen.append(fact)
        as_of = max(as_of, fact.occurred_at)
        out = process(p, "c1", seen, snapshot, as_of)
        snapshot = out.snapshot
    batch = process(p, "c1", facts, None, as_of)
    assert out.state == batch.state
    assert snapshot is not None and snapshot.tier == batch.snapshot.tier


@settings(max_examples=150, deadline=None)
@given(programs(), histories(), days)
def test_recalculation_under_an_unchanged_program_emits_nothing(p, facts, moment) -> None:  # type: ignore[no-untyped-def]
    as_of = max(at(moment), latest(facts))  # type: ignore[call-overload]
    first = process(p, "c1", facts, None, as_of)
    again = recalculate(p, "c1", facts, first.snapshot, as_of)
    assert again.effects == []
    assert again.new_facts == []
    assert again.snapshot == first.snapshot


@settings(max_examples=100, deadline=None)
@given(programs(), histories())
def test_refunds_never_take_more_than_the_order_earned(p, facts) -> None:  # type: ignore[no-untyped-def]
    entries = {e.entry_id: e for e in derive_ledger(p, facts)}
    by_order: dict[str, int] = {}
    for f in facts:
        if isinstance(f, Purchase | Refund):
            by_order[f.order_id] = by_order.get(f.order_id, 0) + entries[f.event_id].points
    assert all(total >= 0 for total in by_order.values())


@settings(max_examples=50, deadline=None)
@given(histories())
def test_facts_survive_json_storage(facts) -> None:  # type: ignore[no-untyped-def]
    assert [fact_from_json(fact_to_json(f)) for f in facts] == facts


def supported_tier(p, points: int) -> int:  # type: ignore[no-untyped-def]
    return max(i for i, tier in enumerate(p.ladder) if points >= tier.threshold)


@settings(max_examples=300, deadline=None)
@given(programs(), histories(), days)
def test_tier_matches_a_reference_model(p, facts, moment) -> None:  # type: ignore[no-untyped-def]
    """Upgrades are immediate (tier >= what the balance supports); without downgrades it is the peak tier."""
    entries = derive_ledger(p, facts)
    as_of = at(moment)
    state = evaluate(p, "c1", entries, as_of)
    assert state.tier >= supported_tier(p, balance_at(entries, as_of))
    if p.downgrade.policy == "none":
        moments = [t for e in entries for t in (e.counts_from, e.expires_at) if t <= as_of] + [as_of]
        peak = max(supported_tier(p, balance_at(entries, t)) for t in moments)
        assert state.tier == peak
    else:
        # With downgrades, a tier above the supported one is only ever held during a pending grace period.
        if state.tier > supported_tier(p, state.points):
            assert state.pending is not None and state.pending.effective_at > as_of

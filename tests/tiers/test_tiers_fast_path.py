"""The in-order fast path (``domain.advance``) is the full re-derivation (``domain.process``), only cheaper.

Property: on random streams of one customer's events, batch after batch (with check-timer evaluations in
between), whenever ``advance`` accepts a batch it gives exactly what re-deriving every fact gives: the new
entries, the tier state (including the balance changes still ahead), the effects, the snapshot and the
derivation that later facts depend on, with the state and derivation stored and read back as the service
stores them. When it declines (a refund, a revocation, an event not later than the known ones, a fact that
completes an early correction), the stream continues from the full re-derivation, as the handler does.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_tiers import store
from loyalty_tiers.domain import (
    Community,
    Derivation,
    Effect,
    Fact,
    Outcome,
    Snapshot,
    TierState,
    advance,
    advance_each,
    process,
)
from loyalty_tiers.program import TiersProgram
from tiers_factories import BASE_PROGRAM, at, grant, program, purchase, refund, review, revoke, survey

CATEGORIES = ["tools", "power_tools", "delivery_fee", "garden"]
GAPS_DAYS = [0, 0, 0.0001, 0.3, 1, 2, 4, 8, 12, 20, 35, 60, 120, 380]


@st.composite
def fast_programs(draw: st.DrawFn) -> TiersProgram:
    caps = draw(st.sampled_from([{}, {"review": {"per_day": 60}, "purchase": {"per_day": 150, "per_month": 400},
                                      "community": {"per_month": 30}}]))
    purchase_rule = {"points_per_currency_unit": draw(st.sampled_from([1, 0.7, 2.5])),
                     "category_multipliers": {"power_tools": 1.5, "garden": 0.3}}
    earning = {**BASE_PROGRAM["earning"], "caps": caps, "purchase": purchase_rule}
    overrides = draw(st.sampled_from([
        [],
        [{"customer_id": "c1", "mode": "floor", "tier": "expert", "reason": "founding member",
          "starts_at": at(30).isoformat(), "expires_at": at(200).isoformat()}],
        [{"customer_id": "c1", "mode": "fixed", "tier": "maker", "reason": "staff",
          "starts_at": at(10).isoformat(), "expires_at": at(90).isoformat()}],
    ]))
    return program(
        earning=earning,
        overrides=overrides,
        window=draw(st.sampled_from([{"kind": "rolling_days", "days": 20}, {"kind": "rolling_days", "days": 90},
                                     {"kind": "calendar_year"},
                                     {"kind": "membership_anniversary"}])),
        downgrade={"policy": draw(st.sampled_from(["none", "one_step", "to_supported"])),
                   "grace_days": draw(st.sampled_from([0, 10, 30])), "notice_days": draw(st.sampled_from([0, 7]))},
        milestones=draw(st.sampled_from([[], [0.5, 0.8]])),
    )


Step = list[Fact] | datetime  # a batch of new facts, or a check timer firing at that time


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    """Mostly in-order earning events (repeated orders, products, requests, rewards included), now and then
    a correction, an evaluation at a later time, or an event older than what came before."""
    steps: list[Step] = []
    clock = at(draw(st.sampled_from([0, 5])))
    n = 0
    for _ in range(draw(st.integers(1, 18))):
        clock += timedelta(days=draw(st.sampled_from(GAPS_DAYS)))
        if draw(st.integers(0, 4)) == 0:
            steps.append(clock)
            continue
        batch: list[Fact] = []
        for _ in range(draw(st.integers(1, 3))):
            n += 1
            when = clock + timedelta(hours=draw(st.sampled_from([0, 0, 1, 30])))
            if draw(st.integers(0, 11)) == 0:
                when = at(draw(st.sampled_from([0, 3, 50])))  # late: older than what came before
            kind = draw(st.integers(0, 19))
            if kind <= 8:
                lines = [(f"l{i}", draw(st.sampled_from(CATEGORIES)), draw(st.integers(1, 3)),
                          draw(st.integers(0, 9000))) for i in range(draw(st.integers(1, 3)))]
                order = f"o{draw(st.integers(0, n + 2))}"
                batch.append(purchase(f"e{n}", when, order, *lines))
            elif kind <= 10:
                batch.append(review(f"e{n}", when, sku=draw(st.sampled_from(["drill", "saw", "glue"])),
                                    text_length=draw(st.sampled_from([50, 150, 300])), photo=draw(st.booleans())))
            elif kind <= 12:
                batch.append(grant(f"e{n}", when, f"rw{draw(st.integers(0, 3))}",
                                   role=draw(st.sampled_from(["referrer", "referee"]))))
            elif kind <= 14:
                batch.append(survey(f"e{n}", when, request_id=f"rq{draw(st.integers(0, 3))}"))
            elif kind <= 16:
                batch.append(Community(f"e{n}", when, f"act{draw(st.integers(0, 5))}",
                                       draw(st.sampled_from(["forum_answer", "workshop_attended", "dance"]))))
            elif kind == 17:
                batch.append(refund(f"e{n}", when, f"o{draw(st.integers(0, n + 2))}", full=True))
            elif kind == 18:
                batch.append(refund(f"e{n}", when, f"o{draw(st.integers(0, n + 2))}", ("l0", 1)))
            else:
                batch.append(revoke(f"e{n}", when, f"rw{draw(st.integers(0, 3))}"))
        steps.append(batch)
    return steps


def _stored(p: TiersProgram, outcome: Outcome, spilled: bool) -> store.CustomerRow:
    """The status row as ``load_customers`` reads it back after the handler wrote it (a spilled customer's
    rewarded keys are not in it: they are in the rewarded table)."""
    row = store.CustomerRow.of("c1", p, outcome.state, outcome.snapshot, outcome.derivation, spilled)
    return store._customer((
        row.customer_id, row.program_version, row.tier, row.since, row.reason, row.points, row.as_of,
        row.pending_to, row.pending_effective_at, row.pending_notice_at, list(row.milestones), row.notice_for,
        row.next_check_at, row.doc_json(),
    ))


def _bounded(d: Derivation | None) -> Derivation | None:
    """A derivation without its rewarded sets (what a spilled customer's document stores)."""
    if d is None:
        return None
    return Derivation(d.member_since, {}, {}, set(), set(), set(), set(d.open_orders), set(d.open_rewards),
                      dict(d.cap_day), dict(d.cap_month))


def _sort_key(fact: Fact) -> tuple[datetime, str]:
    return (fact.occurred_at, fact.event_id)


@settings(max_examples=400, deadline=None)
@given(fast_programs(), streams())
def test_fast_path_agrees_with_the_full_rederivation(p: TiersProgram, steps: list[Step]) -> None:
    _check_stream(p, steps)


@settings(max_examples=200, deadline=None)
@given(fast_programs(), streams())
def test_fast_path_agrees_with_the_full_rederivation_when_rewarded_keys_spill(
    p: TiersProgram, steps: list[Step]
) -> None:
    """The same with at most 2 rewarded keys in the document: most streams spill to the rewarded table."""
    limit = store.REWARDED_INLINE
    store.REWARDED_INLINE = 2
    try:
        _check_stream(p, steps)
    finally:
        store.REWARDED_INLINE = limit


def _check_stream(p: TiersProgram, steps: list[Step]) -> None:
    """Run the stream as the handler does (fast path when ``advance`` takes the batch, else the full
    re-derivation; rewarded keys in the document or, spilled, in the table) and compare every result with
    re-deriving every fact."""
    facts: list[Fact] = []
    row: store.CustomerRow | None = None
    table: dict[tuple[str, str], str | None] = {}  # the customer's rows of the rewarded table
    for step in steps:
        new = [] if isinstance(step, datetime) else step
        times = [f.occurred_at for f in new] + ([step] if isinstance(step, datetime) else [])
        if row is not None:
            times.append(row.as_of)
        if not times:
            continue
        as_of = max(times)
        snapshot = row.snapshot() if row is not None else None
        full = process(p, "c1", [*facts, *new], snapshot, as_of)
        outcome = full
        partial: set[tuple[str, str]] | None = None
        if row is not None:
            state = row.state(p)
            assert state is not None and row.derivation is not None
            if row.spilled:  # what the handler probes: the stored keys the new facts ask about
                partial = set()
                for fact in new:
                    key = store.rewarded_key(fact)
                    if key is not None and key in table:
                        store.add_rewarded(row.derivation, *key, table[key])
                        partial.add(key)
            stepwise = advance_each(p, "c1", copy.deepcopy(row.derivation), state, new, snapshot, as_of)
            fast = advance(p, "c1", row.derivation, state, new, snapshot, as_of)
            assert (stepwise is None) == (fast is None)
            if stepwise is not None and fast is not None:
                # One moment at a time: the same entries, state and derivation; the effects and snapshot of
                # ``process`` run once per moment (what one batch per moment would have announced).
                assert stepwise.entries == fast.entries and stepwise.state == fast.state
                assert stepwise.derivation == fast.derivation
                reference_effects: list[Effect] = []
                reference_snapshot, known = snapshot, list(facts)
                moments = sorted({f.occurred_at for f in new})
                for i, moment in enumerate(moments):
                    known += [f for f in new if f.occurred_at == moment]
                    step = process(p, "c1", known, reference_snapshot, as_of if i == len(moments) - 1 else moment)
                    reference_effects += step.effects
                    reference_snapshot = step.snapshot
                if not moments:
                    reference_effects, reference_snapshot = full.effects, full.snapshot
                assert stepwise.effects == reference_effects
                assert stepwise.snapshot == reference_snapshot
            if fast is not None:
                by_id = {e.entry_id: e for e in full.entries}
                assert fast.entries == [by_id[f.event_id] for f in sorted(new, key=_sort_key)]
                assert fast.state == full.state
                assert fast.effects == full.effects
                assert fast.snapshot == full.snapshot
                assert _bounded(fast.derivation) == _bounded(full.derivation)
                if not row.spilled:
                    assert fast.derivation == full.derivation
                assert stepwise is not None
                outcome = stepwise  # what the handler stores and announces
        if outcome is full:
            partial = None  # the full re-derivation knows every key
        assert outcome.derivation is not None and full.derivation is not None
        placed = store.rewarded_write(outcome.derivation, partial, row is not None and row.spilled, new)
        if placed.replace:
            table = {}
        table.update({(kind, key): event_id for kind, key, event_id in placed.rows})
        facts.extend(new)
        row = _stored(p, outcome, placed.spilled)
        assert row.spilled == placed.spilled and row.derivation is not None
        # Document and table together hold exactly the full derivation's rewarded keys; the rest of the
        # derivation survives storage.
        expected = {(kind, key): event_id for kind, key, event_id in store.rewarded_rows(full.derivation)}
        if row.spilled:
            assert table == expected
            assert row.derivation == _bounded(full.derivation)
        else:
            assert table == {}
            assert row.derivation == full.derivation


def _state_after(p: TiersProgram, facts: list[Fact], as_of: datetime) -> tuple[Derivation, TierState, Snapshot]:
    out = process(p, "c1", facts, None, as_of)
    assert out.derivation is not None
    return out.derivation, out.state, out.snapshot


def test_fast_path_takes_in_order_earning_events_and_declines_the_rest() -> None:
    p = program()
    known: list[Fact] = [purchase("e1", at(0), "o1"), refund("e2", at(1), "o-early", full=True),
                         revoke("e3", at(1), "rw-early")]
    derivation, state, snapshot = _state_after(p, known, at(2))

    def attempt(*new: Fact, as_of: datetime | None = None) -> Any:
        fresh = Derivation(**{k: getattr(derivation, k) for k in Derivation.__slots__})  # type: ignore[attr-defined]
        fresh = store.derivation_from_json(json.loads(json.dumps(store.derivation_to_json(fresh))))
        return advance(p, "c1", fresh, state, list(new), snapshot, as_of or max(f.occurred_at for f in new))

    taken = attempt(purchase("e4", at(3), "o2"), review("e5", at(3)), survey("e6", at(4)))
    assert taken is not None and [e.entry_id for e in taken.entries] == ["e4", "e5", "e6"]
    assert attempt(as_of=at(40)) is not None  # a check timer: nothing new, the walk just continues
    assert attempt(purchase("e4", at(2), "o2")) is None  # not later than what is known
    assert attempt(refund("e4", at(3), "o1", full=True)) is None  # corrections re-derive
    assert attempt(revoke("e4", at(3), "rw1")) is None
    assert attempt(purchase("e4", at(3), "o-early")) is None  # completes the early refund
    assert attempt(grant("e4", at(3), "rw-early")) is None  # completes the early revocation


@st.composite
def downgrade_streams(draw: st.DrawFn) -> tuple[TiersProgram, list[Step]]:
    """Short windows, graces and notices, and small steps: tiers rise and fall, downgrades are pending,
    announced and applied between and across batches (the part of the walk the fast path resumes)."""
    p = program(
        window={"kind": "rolling_days", "days": draw(st.sampled_from([10, 20]))},
        downgrade={"policy": draw(st.sampled_from(["one_step", "to_supported"])),
                   "grace_days": draw(st.sampled_from([0, 3, 8])), "notice_days": draw(st.sampled_from([0, 2, 5]))},
        milestones=[0.5],
        overrides=draw(st.sampled_from([[], [{"customer_id": "c1", "mode": "floor", "tier": "maker",
                                               "reason": "goodwill", "starts_at": at(15).isoformat(),
                                               "expires_at": at(40).isoformat()}]])),
    )
    steps: list[Step] = []
    clock = at(0)
    for n in range(draw(st.integers(2, 20))):
        clock += timedelta(days=draw(st.sampled_from([0.5, 1, 2, 3, 5, 8, 13])))
        if draw(st.integers(0, 2)) == 0:
            steps.append(clock)
        else:
            euros = draw(st.sampled_from([20, 60, 120, 350, 900]))
            steps.append([purchase(f"e{n}", clock, f"o{n}", ("l1", "tools", 1, euros * 100))])
    return p, steps


@settings(max_examples=300, deadline=None)
@given(downgrade_streams())
def test_fast_path_agrees_through_pending_and_applied_downgrades(case: tuple[TiersProgram, list[Step]]) -> None:
    p, steps = case
    _check_stream(p, steps)


def test_status_documents_of_both_formats_read_alike_and_an_unknown_format_takes_the_full_path() -> None:
    """Format 2 writes the balance changes ahead flat under "d2"; format-1 documents ("d", pairs) written
    before stay readable, and a format this reader does not know (a newer replica's, during a rolling
    deploy) yields no derivation, so the customer takes the full re-derivation instead of misreading it."""
    import json

    p = program(milestones=[0.5])
    facts = [purchase(f"p{i}", at(i * 3), f"o{i}") for i in range(12)] + [refund("r1", at(40), "o3", full=True)]
    outcome = process(p, "c1", facts, None, at(40))
    row = store.CustomerRow.of("c1", p, outcome.state, outcome.snapshot, outcome.derivation, False)
    assert len(row.future) >= 10  # every purchase's expiry is still ahead
    columns = (row.customer_id, row.program_version, row.tier, row.since, row.reason, row.points, row.as_of,
               row.pending_to, row.pending_effective_at, row.pending_notice_at, list(row.milestones),
               row.notice_for, row.next_check_at)
    doc = json.loads(row.doc_json())
    assert "d2" in doc and "d" not in doc and doc["f"] == [x for change in row.future for x in change]
    current = store._customer((*columns, row.doc_json()))
    assert current.future == row.future and current.derivation == row.derivation
    assert current.state(p) == outcome.state

    format_1 = {k: v for k, v in doc.items() if k not in ("d2", "f")} | {"d": doc["d2"], "f": list(row.future)}
    assert store._customer((*columns, json.dumps(format_1))) == current

    newer = {k: v for k, v in doc.items() if k != "d2"} | {"d3": doc["d2"]}
    unknown = store._customer((*columns, json.dumps(newer)))
    assert unknown.derivation is None and unknown.state(p) is None

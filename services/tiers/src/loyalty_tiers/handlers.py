"""Thin handlers: decode → domain → persist → emit, one batch at a time (multi-row SQL per batch).

One batch handler serves every consumed event type: it turns envelopes into domain facts, groups them by
tenant and customer, runs the pure domain per customer and persists the results. The
check timer (``tiers.check``) runs the same path with no new facts at the timer's due time.
Per batch: one advisory-lock statement, one read of the customers' status rows (each carries what the
in-order fast path continues from), then multi-row writes of ledger rows (with the new facts), statuses,
history and timers; customers that need the full re-derivation add one read of their facts and one of their
entries' current revisions; customers whose rewarded keys spilled out of the status document add one probe of
the ``rewarded`` table (only the keys the batch's facts ask about) and one insert of the new ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from loyalty_contracts.base import Event
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.referrals import ReferralRewardGranted, ReferralRewardRevoked
from loyalty_contracts.events.retail import (
    CommunityActivity,
    PurchaseMade,
    PurchaseRefunded,
    ReviewLeft,
    SurveyAnswered,
)
from loyalty_contracts.events.tiers import Perk, TierChanged, TierDowngradeScheduled, TierProgressMilestone
from loyalty_kit.batch import BatchContext
from loyalty_kit.effects import EffectContext
from loyalty_kit.timers import Timer, TimerContext

from loyalty_tiers import domain, store
from loyalty_tiers.domain import TierState
from loyalty_tiers.program import TiersProgram

CONSUMED_TYPES: tuple[str, ...] = tuple(
    cls.ce_type()
    for cls in (PurchaseMade, PurchaseRefunded, ReviewLeft, ReferralRewardGranted, ReferralRewardRevoked,
                SurveyAnswered, CommunityActivity)
)
CHECK_TIMER = "tiers.check"


@dataclass(frozen=True)
class TenantRules:
    """A tenant's tiers program plus what the header adds (time zone, default locale, currency)."""

    program: TiersProgram
    zone: ZoneInfo
    default_locale: str
    currency: str


class UnknownTenant(Exception):
    pass


class StaleProgramVersion(Exception):
    """This process runs an older program version than a customer's stored status (recalculated since).

    Applying the older rules would silently undo the recalculation, so the events are refused instead (the
    kit dead-letters them with this message); restart the service with the new program file, then replay.
    """


_ZERO = timedelta(0)
_NOTHING_LOADED: frozenset[tuple[str, str]] = frozenset()


def _utc(moment: datetime) -> datetime:
    """The same instant, with the standard library's UTC tzinfo when the offset is zero.

    Pydantic parses "...Z" with its own ``TzInfo``; Postgres rows and the stored document give
    ``datetime.UTC``. Comparing two datetimes whose tzinfo objects differ goes through ``utcoffset()``
    (~300 ns instead of ~30 ns), and the domain sorts and compares event times all the time.
    Same instant, same ``isoformat()``, same JSON; other offsets are left as they are.
    """
    if moment.tzinfo is UTC or moment.utcoffset() != _ZERO:
        return moment
    return moment.replace(tzinfo=UTC)


def to_fact(env: Envelope) -> domain.Fact | None:
    """The domain's view of a consumed event; None for events that carry no status points."""
    data = env.data
    occurred_at = _utc(data.occurred_at)
    if isinstance(data, PurchaseMade):
        return domain.Purchase(
            env.id, occurred_at, data.order_id, data.total.currency,
            tuple(domain.PurchaseLine(ln.line_id, ln.category, ln.quantity, ln.unit_price.amount_minor)
                  for ln in data.lines),
        )
    if isinstance(data, PurchaseRefunded):
        return domain.Refund(env.id, occurred_at, data.order_id, data.refund_id, data.full,
                             tuple((ln.line_id, ln.quantity) for ln in data.lines))
    if isinstance(data, ReviewLeft):
        return domain.Review(env.id, occurred_at, data.review_id, data.sku, data.text_length, data.has_photo)
    if isinstance(data, ReferralRewardGranted):
        if data.kind != "points":
            return None  # coupons and perks are not status points
        return domain.ReferralGrant(env.id, occurred_at, data.reward_id, data.beneficiary_role,
                                    data.points or 0)
    if isinstance(data, ReferralRewardRevoked):
        if data.kind != "points":
            return None
        return domain.ReferralRevoke(env.id, occurred_at, data.reward_id, data.beneficiary_role)
    if isinstance(data, SurveyAnswered):
        return domain.SurveyAnswer(env.id, occurred_at, data.request_id)
    if isinstance(data, CommunityActivity):
        return domain.Community(env.id, occurred_at, data.activity_id, data.kind)
    raise TypeError(f"tiers does not handle {env.type}")


# --- outgoing events ----------------------------------------------------------------------------------


def _names(program: TiersProgram, tier_id: str) -> dict[str, str]:
    for tier in program.ladder:
        if tier.id == tier_id:
            return dict(tier.name)
    return {}


def _perks(rules: TenantRules, tier_id: str) -> list[Perk]:
    for tier in rules.program.ladder:
        if tier.id == tier_id:
            return [
                Perk(perk_id=p.id, kind=p.kind, name=p.name.get(rules.default_locale) or next(iter(p.name.values())),
                     names=dict(p.name), descriptions=dict(p.description))
                for p in tier.perks
            ]
    return []


def to_event(rules: TenantRules, customer_id: str, effect: domain.Effect, as_of: datetime) -> Event:
    program = rules.program
    if isinstance(effect, domain.TierChange):
        return TierChanged(
            customer_id=customer_id, occurred_at=effect.effective_at, from_tier=effect.from_tier,
            to_tier=effect.to_tier, direction=effect.direction, reason=effect.reason,
            effective_at=effect.effective_at, perks=_perks(rules, effect.to_tier), points=max(0, effect.points),
            from_tier_names=_names(program, effect.from_tier), to_tier_names=_names(program, effect.to_tier),
            program_version=program.version,
        )
    if isinstance(effect, domain.Milestone):
        return TierProgressMilestone(
            customer_id=customer_id, occurred_at=effect.at or as_of, tier=effect.tier, next_tier=effect.next_tier,
            fraction=float(effect.fraction), points=max(0, effect.points), points_needed=effect.points_needed,
            next_tier_names=_names(program, effect.next_tier),
        )
    return TierDowngradeScheduled(
        customer_id=customer_id, occurred_at=effect.at or as_of, from_tier=effect.from_tier, to_tier=effect.to_tier,
        effective_at=effect.effective_at, points_needed=effect.points_needed,
        from_tier_names=_names(program, effect.from_tier), to_tier_names=_names(program, effect.to_tier),
    )


def timer_key(tenant: str, customer_id: str, due_at: datetime) -> str:
    # The due time is part of the key: the kit deletes a fired timer's row by id after the handler, so a
    # follow-up check scheduled under the same key from inside the handler would be deleted with it.
    # UTC: the same instant read back from Postgres must give the same key (offsets differ otherwise).
    return f"{tenant}/{due_at.astimezone(UTC).isoformat()}/{customer_id}"


# --- the shared path ------------------------------------------------------------------------------------


@dataclass
class AppliedCounts:
    customers: int = 0
    tier_changes: int = 0
    milestones: int = 0
    notices: int = 0
    full_rederivations: int = 0  # customers that could not take the in-order fast path
    changed_to: list[str] = field(default_factory=list)  # to_tier of each tier change (metrics)


@dataclass
class _Pending:
    """A customer waiting for the full re-derivation (needs the stored facts and ledger revisions)."""

    customer_id: str
    before: store.CustomerRow
    fresh: list[domain.Fact]
    cause: Envelope | None
    as_of: datetime


class _Batch:
    """The rows one ``apply_customers`` call writes, collected per table (one statement each)."""

    def __init__(self, ctx: EffectContext, tenant: str, rules: TenantRules, counts: AppliedCounts) -> None:
        self.ctx = ctx
        self.tenant = tenant
        self.rules = rules
        self.counts = counts
        self.ledger_rows: list[store.LedgerRow] = []
        self.new_customers: list[store.CustomerRow] = []
        self.known_customers: list[store.CustomerRow] = []
        self.history_rows: list[store.HistoryRow] = []
        self.timers_to_cancel: list[str] = []
        self.timers_to_schedule: list[tuple[str, str, datetime, dict[str, str], str]] = []
        self.rewarded: list[tuple[str, str, str, str | None]] = []
        self.rewarded_replaced: list[str] = []  # customers whose rewarded keys are all written again

    def add(
        self,
        customer_id: str,
        before: store.CustomerRow | None,
        outcome: domain.Outcome,
        new_facts: Sequence[domain.Fact],
        cause: Envelope | None,
        as_of: datetime,
        prior_keys: Mapping[str, store.EntryKey] | None,
        rewarded_partial: AbstractSet[store.RewardedKey] | None = None,
    ) -> None:
        """``prior_keys``: the current revisions of the customer's entries (full re-derivation), or None when
        every entry of ``outcome`` is new (the fast path, a first event). ``rewarded_partial``: the rewarded
        keys the fast path probed for a spilled customer, or None: the derivation holds all of them
        (``store.rewarded_write`` decides where they go)."""
        program = self.rules.program
        ledger_rows = self.ledger_rows
        # Append-only ledger: new entries get revision 1, changed ones (a late purchase completing an early
        # refund, a late event under a cap) a new revision; unchanged ones nothing. The row of a new fact's
        # entry also stores the fact (what a later full re-derivation reads).
        if prior_keys is None:  # every entry is a new fact's, in the same order
            if len(new_facts) == 1:
                ledger_rows.append((customer_id, 1, outcome.entries[0], new_facts[0]))
            else:
                by_id = {f.event_id: f for f in new_facts}
                for entry in outcome.entries:
                    ledger_rows.append((customer_id, 1, entry, by_id.get(entry.entry_id)))
        else:
            fresh = {f.event_id: f for f in new_facts}
            for entry in outcome.entries:
                prior = prior_keys.get(entry.entry_id)
                fact = fresh.get(entry.entry_id)
                if prior is None:
                    ledger_rows.append((customer_id, 1, entry, fact))
                elif fact is not None or prior[1:] != store.entry_key(0, entry)[1:]:
                    ledger_rows.append((customer_id, prior[0] + 1, entry, fact))

        derivation = outcome.derivation
        spilled = False
        if derivation is not None:
            was_spilled = before is not None and before.spilled
            placed = store.rewarded_write(derivation, rewarded_partial, was_spilled, new_facts)
            spilled = placed.spilled
            if placed.replace:
                self.rewarded_replaced.append(customer_id)
            self.rewarded += [(customer_id, *r) for r in placed.rows]
        row = store.CustomerRow.of(customer_id, program, outcome.state, outcome.snapshot, derivation, spilled)
        (self.new_customers if before is None else self.known_customers).append(row)
        counts = self.counts
        ctx = self.ctx
        for effect in outcome.effects:
            event = to_event(self.rules, customer_id, effect, as_of)
            if cause is not None:
                ctx.emit(event, cause=cause)
            else:
                ctx.emit(event, tenant=self.tenant)
            if isinstance(effect, domain.TierChange):
                counts.tier_changes += 1
                counts.changed_to.append(effect.to_tier)
                self.history_rows.append(store.HistoryRow(
                    customer_id, effect.from_tier, effect.to_tier, effect.direction, effect.reason,
                    effect.effective_at, effect.points, program.version,
                ))
            elif isinstance(effect, domain.Milestone):
                counts.milestones += 1
            else:
                counts.notices += 1

        old_check = before.next_check_at if before is not None else None
        new_check = row.next_check_at
        if new_check != old_check:
            if old_check is not None:
                self.timers_to_cancel.append(timer_key(self.tenant, customer_id, old_check))
            if new_check is not None:
                self.timers_to_schedule.append((CHECK_TIMER, timer_key(self.tenant, customer_id, new_check),
                                                new_check, {"customer_id": customer_id}, self.tenant))

    async def write(self) -> None:
        conn = self.ctx.conn
        await store.append_ledger(conn, self.tenant, self.rules.program.version, self.ledger_rows)
        await store.update_customers(conn, self.tenant, self.known_customers)
        await store.upsert_customers(conn, self.tenant, self.new_customers)
        await store.insert_history(conn, self.tenant, self.history_rows)
        if self.rewarded or self.rewarded_replaced:
            await store.write_rewarded(conn, self.tenant, self.rewarded, self.rewarded_replaced)
        await self.ctx.cancel_many(CHECK_TIMER, self.timers_to_cancel)
        await self.ctx.schedule_many(self.timers_to_schedule)


async def apply_customers(
    ctx: EffectContext,
    tenant: str,
    rules: TenantRules,
    new_facts: Mapping[str, Sequence[tuple[domain.Fact, Envelope | None]]],
    evaluate_at: Mapping[str, datetime] | None = None,
    *,
    recalculating: bool = False,
) -> AppliedCounts:
    """Bring these customers up to date: new facts in, ledger revisions, status, history, events, timers.

    Each customer takes the in-order fast path (``domain.advance_each``: only the new facts, from the stored
    derivation and state, one moment at a time so each step's tier changes and milestones are announced)
    when it gives the same state as re-deriving everything; otherwise (a late or out-of-order event, a
    refund or revocation, another program version, a recalculation) its stored facts and ledger revisions
    are read and everything is re-derived (``domain.process`` / ``recalculate``: the effects are then the
    difference between what was announced and the corrected state)."""
    program = rules.program
    zone = rules.zone
    evaluate_at = evaluate_at or {}
    customers = sorted(set(new_facts) | set(evaluate_at))
    counts = AppliedCounts(customers=len(customers))
    if not customers:
        return counts
    conn = ctx.conn
    await store.lock_customers(conn, tenant, customers)
    stored = await store.load_customers(conn, tenant, customers)
    batch = _Batch(ctx, tenant, rules, counts)
    slow: list[_Pending] = []
    fast: list[tuple[str, store.CustomerRow, TierState, list[domain.Fact], Envelope | None, datetime]] = []
    for customer_id in customers:
        before = stored.get(customer_id)
        if before is not None and before.program_version > program.version:
            raise StaleProgramVersion(
                f"tenant {tenant}: customer {customer_id} is on tiers program version {before.program_version} "
                f"but this process runs version {program.version}; restart it with the new program file"
            )
        fresh: list[domain.Fact] = []
        seen: set[str] = set()
        cause: Envelope | None = None
        as_of: datetime | None = before.as_of if before is not None else None
        for fact, env in new_facts.get(customer_id, ()):
            cause = env or cause
            if fact.event_id in seen:
                continue
            seen.add(fact.event_id)
            fresh.append(fact)
            if as_of is None or fact.occurred_at > as_of:
                as_of = fact.occurred_at
        due = evaluate_at.get(customer_id)
        if due is not None and (as_of is None or due > as_of):
            as_of = due
        if as_of is None:
            continue
        if before is None:
            # A first event: its facts are all there is, so the full derivation is as cheap as the fast path
            # (step by step: several facts in one batch announce what each step reached, as live traffic would).
            outcome = domain.process_each(program, customer_id, fresh, None, as_of, zone)
            batch.add(customer_id, None, outcome, fresh, cause, as_of, None)
            continue
        state = before.state(program) if not recalculating else None
        if state is None:
            slow.append(_Pending(customer_id, before, fresh, cause, as_of))
        else:
            fast.append((customer_id, before, state, fresh, cause, as_of))

    if fast:
        # Spilled customers (more rewarded keys than the document keeps): probe the table for the keys
        # their facts ask "rewarded once already?" about, one primary-key probe each, one query.
        wanted = [(customer_id, key[0], key[1], None) for customer_id, before, _, fresh, _, _ in fast
                  if before.spilled for key in map(store.rewarded_key, fresh) if key is not None]
        loaded: dict[str, set[store.RewardedKey]] = {}
        for customer_id, kind, key, event_id in await store.load_rewarded(conn, tenant, wanted):
            derivation = stored[customer_id].derivation
            assert derivation is not None
            store.add_rewarded(derivation, kind, key, event_id)
            loaded.setdefault(customer_id, set()).add((kind, key))
        for customer_id, before, state, fresh, cause, as_of in fast:
            assert before.derivation is not None
            outcome_or_none = domain.advance_each(program, customer_id, before.derivation, state, fresh,
                                                  before.snapshot(), as_of, zone)
            if outcome_or_none is None:
                slow.append(_Pending(customer_id, before, fresh, cause, as_of))
            else:
                partial = loaded.get(customer_id, _NOTHING_LOADED) if before.spilled else None
                batch.add(customer_id, before, outcome_or_none, fresh, cause, as_of, None, partial)

    if slow:
        counts.full_rederivations = len(slow)
        ids = [p.customer_id for p in slow]
        stored_facts = await store.load_facts(conn, tenant, ids)
        stored_keys = await store.load_entry_keys(conn, tenant, program.version, ids)
        for p in slow:
            facts = stored_facts.get(p.customer_id, [])
            known = {f.event_id for f in facts}
            fresh = [f for f in p.fresh if f.event_id not in known]
            facts.extend(fresh)
            snapshot = p.before.snapshot()
            if recalculating or p.before.program_version != program.version:
                outcome = domain.recalculate(program, p.customer_id, facts, snapshot, p.as_of, zone)
                fresh.extend(outcome.new_facts)
            else:
                outcome = domain.process(program, p.customer_id, facts, snapshot, p.as_of, zone)
            batch.add(p.customer_id, p.before, outcome, fresh, p.cause, p.as_of, stored_keys.get(p.customer_id, {}))
    await batch.write()
    return counts


class TiersHandlers:
    """The service's handlers, bound to the tenants' programs."""

    def __init__(
        self, rules: Mapping[str, TenantRules], on_tier_change: Callable[[str, str], None] | None = None
    ) -> None:
        self.rules = rules
        self.on_tier_change = on_tier_change  # (tenant, to_tier) per announced change, e.g. a metric

    def _changed(self, ctx: EffectContext, tenant: str, counts: AppliedCounts) -> None:
        # After the commit: a batch that rolls back and is retried (or bisected) must not count twice.
        notify, changed = self.on_tier_change, list(counts.changed_to)
        if notify is None or not changed:
            return

        def count_changes() -> None:
            for to_tier in changed:
                notify(tenant, to_tier)

        ctx.after_commit(count_changes)

    def rules_for(self, tenant: str) -> TenantRules:
        try:
            return self.rules[tenant]
        except KeyError:
            raise UnknownTenant(f"no tiers program for tenant {tenant!r}") from None

    async def on_batch(self, ctx: BatchContext) -> None:
        by_tenant: dict[str, dict[str, list[tuple[domain.Fact, Envelope | None]]]] = {}
        for env in ctx.events:
            fact = to_fact(env)
            if fact is None:
                continue
            by_tenant.setdefault(env.tenant, {}).setdefault(env.data.customer_id, []).append((fact, env))
        for tenant, per_customer in by_tenant.items():
            self._changed(ctx, tenant, await apply_customers(ctx, tenant, self.rules_for(tenant), per_customer))

    async def on_check(self, ctx: TimerContext, timers: list[Timer]) -> None:
        by_tenant: dict[str, dict[str, datetime]] = {}
        for timer in timers:
            customer_id = str(timer.payload["customer_id"])
            due = by_tenant.setdefault(timer.tenant, {})
            due[customer_id] = max(timer.due_at, due.get(customer_id, timer.due_at))
        for tenant, evaluate_at in by_tenant.items():
            self._changed(ctx, tenant, await apply_customers(ctx, tenant, self.rules_for(tenant), {}, evaluate_at))

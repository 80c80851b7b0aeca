"""Thin glue: decode contract events → pure domain → persist → emit.

One batch handler takes all five consumed event types so a customer's registration, purchase and refund
in one batch are applied in order against one loaded `ReferralBook` per tenant. Loading and saving are a
fixed number of multi-row statements per batch (see store.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loyalty_contracts.base import Event, Money
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.referrals import (
    ReferralCodeIssued,
    ReferralConverted,
    ReferralRejected,
    ReferralRewardGranted,
    ReferralRewardRevoked,
)
from loyalty_contracts.events.retail import CustomerRegistered, FriendInvited, PurchaseMade, PurchaseRefunded
from loyalty_contracts.events.surveys import FeedbackReceived
from loyalty_kit import BatchContext, Timer, TimerContext
from loyalty_kit.effects import EffectContext

from loyalty_referrals import store
from loyalty_referrals.domain import (
    REFERRAL_NAMESPACE,
    CodeIssued,
    Converted,
    Effect,
    HoldScheduled,
    Invitation,
    OrderLine,
    Purchase,
    ReferralBook,
    Refund,
    Registration,
    Rejected,
    RewardGranted,
    RewardRevoked,
    RewardSpec,
    Rules,
    SentToReview,
    derive_code,
    normalize_code,
    referral_id_for,
    share_link,
    uuid5_text,
)
from loyalty_referrals.program import ReferralsProgram

CONSUMED = (
    CustomerRegistered.ce_type(),
    FriendInvited.ce_type(),
    PurchaseMade.ce_type(),
    PurchaseRefunded.ce_type(),
    FeedbackReceived.ce_type(),
)
HOLD_TIMER = "referral-reward-hold"
MAX_CODE_ATTEMPTS = 8


class CodeSpaceExhausted(RuntimeError):
    """No free code after several attempts: the code length is too short for the tenant's size."""


@dataclass(frozen=True)
class Runtime:
    """Per-process configuration: each tenant's program section, rules and code secret."""

    programs: Mapping[str, ReferralsProgram]
    rules: Mapping[str, Rules]
    secrets: Mapping[str, bytes]

    @classmethod
    def build(cls, programs: Mapping[str, ReferralsProgram], secrets: Mapping[str, bytes]) -> Runtime:
        return cls(programs, {t: p.rules() for t, p in programs.items()}, secrets)


# ------------------------------------------------------------------------------------------ contract → domain


def registration_of(data: CustomerRegistered) -> Registration:
    hashes = data.contact_hashes
    contact = frozenset(h for h in ((hashes.email, hashes.phone) if hashes else ()) if h)
    return Registration(data.customer_id, data.occurred_at, contact, data.email_domain, data.referral_code)


def invitation_of(data: FriendInvited) -> Invitation:
    return Invitation(
        data.invitation_id,
        data.customer_id,
        data.invitee_contact_hash,
        data.occurred_at,
        data.channel,
        data.invitee_email_domain.lower() if data.invitee_email_domain else None,
    )


def purchase_of(data: PurchaseMade) -> Purchase:
    return Purchase(
        customer_id=data.customer_id,
        order_id=data.order_id,
        at=data.occurred_at,
        total_minor=data.total.amount_minor,
        currency=data.total.currency,
        lines=tuple(OrderLine(ln.category, ln.quantity, ln.unit_price.amount_minor) for ln in data.lines),
        payment_fingerprint=data.payment_fingerprint_hash,
        shipping_address=data.shipping_address_hash,
        referral_code=data.referral_code,
    )


def refund_of(data: PurchaseRefunded) -> Refund:
    return Refund(data.customer_id, data.order_id, data.occurred_at, data.full, data.amount.amount_minor)


# ------------------------------------------------------------------------------------------ domain → contract


def reward_id_for(referral_id: str, role: str) -> str:
    return uuid5_text(REFERRAL_NAMESPACE, f"{referral_id}\x00{role}")


def _reward_payload(spec: RewardSpec) -> dict[str, object]:
    if spec.kind == "points":
        return {"kind": "points", "points": spec.points}
    if spec.kind == "coupon":
        return {
            "kind": "coupon",
            "coupon_value": Money(amount_minor=spec.amount_minor or 0, currency=spec.currency or ""),
        }
    return {"kind": "perk", "perk_id": spec.perk}


def to_contract(effect: Effect, tenant: str, program: ReferralsProgram) -> Event | None:
    """The event an effect publishes (None for effects that only change state or schedule work)."""
    if isinstance(effect, CodeIssued):
        return ReferralCodeIssued(
            customer_id=effect.customer_id,
            occurred_at=effect.at,
            code=effect.code,
            share_link=share_link(program.codes.link_template, effect.code),
        )
    if isinstance(effect, Converted):
        return ReferralConverted(
            customer_id=effect.referrer_id,
            occurred_at=effect.at,
            referral_id=effect.referral_id,
            referrer_id=effect.referrer_id,
            referee_id=effect.referee_id,
            order_id=effect.order_id,
        )
    if isinstance(effect, RewardGranted):
        return ReferralRewardGranted(
            customer_id=effect.beneficiary_id,
            occurred_at=effect.at,
            reward_id=reward_id_for(effect.referral_id, effect.role),
            referral_id=effect.referral_id,
            beneficiary_role=effect.role,
            **_reward_payload(effect.spec),  # type: ignore[arg-type]
        )
    if isinstance(effect, RewardRevoked):
        return ReferralRewardRevoked(
            customer_id=effect.beneficiary_id,
            occurred_at=effect.at,
            reward_id=reward_id_for(effect.referral_id, effect.role),
            referral_id=effect.referral_id,
            beneficiary_role=effect.role,
            reason=effect.reason,
            **_reward_payload(effect.spec),  # type: ignore[arg-type]
        )
    if isinstance(effect, Rejected):
        return ReferralRejected(
            customer_id=effect.referee_id,
            occurred_at=effect.at,
            referral_id=effect.referral_id or referral_id_for(tenant, effect.referee_id),
            referrer_id=effect.referrer_id,
            reason=effect.reason.value,  # type: ignore[arg-type]
            detail=effect.detail or None,
        )
    return None  # HoldScheduled, SentToReview: state and timers only


TimerRow = tuple[str, str, datetime, Mapping[str, Any] | None, str]


async def publish_effects(
    ctx: EffectContext,
    tenant: str,
    program: ReferralsProgram,
    effects: list[Effect],
    rejections: list[store.RejectionRow],
    timers: list[TimerRow],
    *,
    cause: Envelope | None = None,
) -> None:
    """Emit the events of `effects` (outbox); collect rejection rows and hold timers for one write each."""
    for effect in effects:
        if isinstance(effect, HoldScheduled):
            timers.append((HOLD_TIMER, effect.referral_id, effect.due_at, {"referee_id": effect.referee_id}, tenant))
            continue
        if isinstance(effect, SentToReview):
            continue
        event = to_contract(effect, tenant, program)
        if event is None:
            continue
        env = ctx.emit(event, cause=cause) if cause is not None else ctx.emit(event, tenant=tenant)
        if isinstance(effect, Rejected) and isinstance(event, ReferralRejected):
            rejections.append(
                store.RejectionRow(
                    env.id,
                    effect.referee_id,
                    effect.referrer_id,
                    event.referral_id,
                    effect.reason.value,
                    effect.detail,
                    effect.at,
                )
            )


# ------------------------------------------------------------------------------------------ the batch handler


def needs_of(events: list[Envelope]) -> store.BatchNeeds:
    needs = store.BatchNeeds()
    for env in events:
        data = env.data
        needs.saw(data.occurred_at)
        if isinstance(data, CustomerRegistered):
            needs.subjects.add(data.customer_id)
            needs.contact_hashes |= registration_of(data).contact_hashes
            if data.referral_code:
                needs.codes.add(normalize_code(data.referral_code))
        elif isinstance(data, FriendInvited):
            needs.referrers.add(data.customer_id)
            needs.contact_hashes.add(data.invitee_contact_hash)
        elif isinstance(data, PurchaseMade):
            needs.subjects.add(data.customer_id)
            if data.referral_code:
                needs.codes.add(normalize_code(data.referral_code))
        elif isinstance(data, PurchaseRefunded):
            needs.subjects.add(data.customer_id)
    return needs


async def new_codes_for(
    ctx: BatchContext, tenant: str, secret: bytes, length: int, book: ReferralBook, events: list[Envelope]
) -> dict[str, str]:
    """A fresh code for each customer registering without one; collisions move to the next attempt."""
    wanting = sorted(
        {
            env.data.customer_id
            for env in events
            if isinstance(env.data, CustomerRegistered)
            and (env.data.customer_id not in book.customers or book.customers[env.data.customer_id].code is None)
        }
    )
    chosen: dict[str, str] = {}
    attempt = {customer: 0 for customer in wanting}
    pending = list(wanting)
    while pending:
        candidates = {c: derive_code(secret, tenant, c, length, attempt[c]) for c in pending}
        taken = await store.taken_codes(ctx.conn, tenant, candidates.values())
        taken |= set(chosen.values())
        retry: list[str] = []
        for customer, code in candidates.items():
            if code in taken or code in book.codes:
                attempt[customer] += 1
                if attempt[customer] >= MAX_CODE_ATTEMPTS:
                    raise CodeSpaceExhausted(f"tenant {tenant}: no free referral code after {MAX_CODE_ATTEMPTS} tries")
                retry.append(customer)
            else:
                chosen[customer] = code
                taken.add(code)
        pending = retry
    return chosen


async def handle_batch(ctx: BatchContext, runtime: Runtime) -> None:
    await store.plan_each_call(ctx.conn)
    by_tenant: dict[str, list[Envelope]] = defaultdict(list)
    # Event-time order: one batch mixes topics (a customer's registration and purchase travel on different
    # topics), so arrival order is not the order things happened in. Stable, so per-key order holds on ties.
    for env in sorted(ctx.events, key=lambda e: e.data.occurred_at):
        by_tenant[env.tenant].append(env)
    for tenant, events in by_tenant.items():
        program = runtime.programs[tenant]  # the kit dead-letters unknown tenants before we get here
        book = await store.load_book(ctx.conn, tenant, runtime.rules[tenant], needs_of(events))
        codes = await new_codes_for(ctx, tenant, runtime.secrets[tenant], program.codes.length, book, events)
        await store.load_code_waiters(ctx.conn, book, codes)
        rejections: list[store.RejectionRow] = []
        timers: list[TimerRow] = []
        feedback: list[store.FeedbackRow] = []
        for env in events:
            data = env.data
            effects: list[Effect]
            if isinstance(data, CustomerRegistered):
                effects = book.on_registered(registration_of(data), new_code=codes.get(data.customer_id))
            elif isinstance(data, FriendInvited):
                effects = book.on_invited(invitation_of(data))
            elif isinstance(data, PurchaseMade):
                effects = book.on_purchase(purchase_of(data))
            elif isinstance(data, PurchaseRefunded):
                effects = book.on_refund(refund_of(data))
            elif isinstance(data, FeedbackReceived):
                feedback.append(
                    store.FeedbackRow(
                        data.feedback_id, data.customer_id, data.survey_kind, data.score, data.occurred_at
                    )
                )
                effects = []
            else:  # pragma: no cover - the kit routes only the registered types here
                raise TypeError(f"unexpected event {env.type}")
            await publish_effects(ctx, tenant, program, effects, rejections, timers, cause=env)
        await store.save_book(ctx.conn, book)
        await ctx.schedule_many(timers)
        await store.save_rejections(ctx.conn, tenant, rejections)
        await store.save_feedback(ctx.conn, tenant, feedback)


async def handle_hold_timers(ctx: TimerContext, timers: list[Timer], runtime: Runtime) -> None:
    """The return window passed for these referrals: grant what is still held."""
    await store.plan_each_call(ctx.conn)
    by_tenant: dict[str, list[Timer]] = defaultdict(list)
    for timer in timers:
        by_tenant[timer.tenant].append(timer)
    for tenant, group in by_tenant.items():
        program = runtime.programs.get(tenant)
        if program is None:
            continue  # tenant removed from the programs: nothing to pay out under rules we no longer have
        book = await store.load_referrals(ctx.conn, tenant, runtime.rules[tenant], [t.key for t in group])
        rejections: list[store.RejectionRow] = []
        follow_ups: list[TimerRow] = []
        for timer in group:
            due: datetime = timer.due_at
            effects = book.on_hold_expired(str(timer.payload.get("referee_id", "")), due)
            await publish_effects(ctx, tenant, program, effects, rejections, follow_ups)
        await store.save_referrals(ctx.conn, tenant, [book.referrals[r] for r in sorted(book.dirty_referrals)])

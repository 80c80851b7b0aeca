"""Test data only: plausible result events for a retailer plan, standing in for the four services.

The report must render from real results; this builds a small set by hand so the report test does not need the
services running. Each result carries its cause's trace id, like the kit's emit(cause=...).
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta

from loyalty_contracts.base import Event, Money
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.notifier import NotificationDelivered, NotificationSuppressed
from loyalty_contracts.events.referrals import (
    ReferralCodeIssued,
    ReferralConverted,
    ReferralRejected,
    ReferralRewardGranted,
)
from loyalty_contracts.events.surveys import (
    CaseDeadlineBreached,
    DetractorCaseOpened,
    FeedbackReceived,
    LoopClosed,
    SurveyRequested,
)
from loyalty_contracts.events.tiers import TierChanged
from loyalty_suite.demo.retailer import RetailerPlan, nps_answer

LADDER = ((0, "novice"), (1000_00, "maker"), (3000_00, "expert"), (8000_00, "guru"))
THEMES = {"delivery": ("deliver", "courier", "parcel", "доставк", "посылк", "курьер", "late"),
          "price": ("price", "expensive", "цен", "дорого", "overpriced"),
          "quality": ("quality", "broke", "качеств", "сломал", "брак"),
          "staff": ("staff", "consultant", "rude", "персонал", "консультант")}


def _child(cause: Envelope, data: Event, source: str, rng: random.Random) -> Envelope:
    trace = cause.traceparent.split("-")[1] if cause.traceparent else f"{rng.getrandbits(128) | 1:032x}"
    return Envelope.new(data, tenant=cause.tenant, source=source, id=str(uuid.UUID(int=rng.getrandbits(128))),
                        traceparent=f"00-{trace}-{rng.getrandbits(64) | 1:016x}-01")


def synthetic_results(plan: RetailerPlan, seed: int = 1) -> Iterator[Envelope]:
    """Results for the plan's inputs: tiers, referral outcomes, surveys + cases, notifier outcomes."""
    rng = random.Random(seed)
    spend: dict[str, int] = defaultdict(int)
    tier: dict[str, str] = {}
    first_order: dict[str, Envelope] = {}
    referred = {cid for cid in plan.referral_claims}
    for env in plan.envelopes:
        data = env.data
        if data.event_type == "CustomerRegistered":
            yield _child(env, ReferralCodeIssued(customer_id=data.customer_id, occurred_at=data.occurred_at,
                                                 code="ABCD2345", share_link="https://x.example/i/ABCD2345"),
                         "referrals", rng)
        if data.event_type != "PurchaseMade":
            continue
        cid = data.customer_id
        spend[cid] += data.total.amount_minor
        new_tier = [name for threshold, name in LADDER if spend[cid] >= threshold][-1]
        if tier.get(cid) != new_tier:
            changed = _child(env, TierChanged(
                customer_id=cid, occurred_at=data.occurred_at, from_tier=tier.get(cid), to_tier=new_tier,
                direction="up", reason="threshold_reached", effective_at=data.occurred_at), "tiers", rng)
            tier[cid] = new_tier
            yield changed
            if changed.data.from_tier is not None:
                yield _child(changed, NotificationDelivered(
                    customer_id=cid, occurred_at=data.occurred_at, notification_id=f"n-{changed.id}",
                    source_event_id=changed.id, source_event_type=changed.type, channel="email",
                    template="tier_changed", recipient_hash="h" * 20), "notifier", rng)
        if cid in first_order:
            continue
        first_order[cid] = env
        if cid in referred:
            referrer = plan.referral_claims[cid]
            if rng.random() < 0.8:
                yield _child(env, ReferralConverted(customer_id=referrer, occurred_at=data.occurred_at,
                                                    referral_id=f"ref-{cid}", referrer_id=referrer, referee_id=cid,
                                                    order_id=data.order_id), "referrals", rng)
                yield _child(env, ReferralRewardGranted(
                    customer_id=cid, occurred_at=data.occurred_at + timedelta(days=30), reward_id=f"rw-{cid}",
                    referral_id=f"ref-{cid}", beneficiary_role="referee", kind="coupon",
                    coupon_value=Money(amount_minor=1000, currency="EUR")), "referrals", rng)
            else:
                yield _child(env, ReferralRejected(customer_id=cid, occurred_at=data.occurred_at,
                                                   referral_id=f"ref-{cid}", referrer_id=referrer,
                                                   reason=rng.choice(("same_payment_fingerprint", "velocity_limit",
                                                                      "below_minimum_order"))), "referrals", rng)
        asked_at = data.occurred_at + timedelta(days=3)
        request = _child(env, SurveyRequested(
            customer_id=cid, occurred_at=asked_at, request_id=f"req-{cid}", survey_id="first-purchase-nps",
            kind="nps", answer_token="t" * 24, answer_url="https://f.example/a",
            expires_at=asked_at + timedelta(days=14), trigger="purchase"), "surveys", rng)
        yield request
        if rng.random() < 0.3:
            yield _child(request, NotificationSuppressed(
                customer_id=cid, occurred_at=asked_at, source_event_id=request.id, source_event_type=request.type,
                category="survey", reason=rng.choice(("no_consent", "contact_budget", "frequency_cap"))),
                "notifier", rng)
            continue
        profile = plan.profile(cid)
        score, comment = nps_answer(rng, profile.locale if profile else "en")
        answered = asked_at + timedelta(hours=rng.uniform(1, 30))
        themes = [t for t, keys in THEMES.items() if comment and any(k in comment.lower() for k in keys)]
        feedback = _child(request, FeedbackReceived(
            customer_id=cid, occurred_at=answered, feedback_id=f"fb-{cid}", request_id=f"req-{cid}",
            survey_kind="nps", score=score, comment=comment, themes=themes, sales_channel=data.sales_channel),
            "surveys", rng)
        yield feedback
        if score <= 6:
            deadline = answered + timedelta(hours=8)
            case = _child(feedback, DetractorCaseOpened(customer_id=cid, occurred_at=answered, case_id=f"case-{cid}",
                                                        feedback_id=f"fb-{cid}", score=score, deadline_at=deadline),
                          "surveys", rng)
            yield case
            yield _child(case, NotificationDelivered(
                customer_id=cid, occurred_at=answered, notification_id=f"n-{case.id}", source_event_id=case.id,
                source_event_type=case.type, channel="webhook", template="webhook_DetractorCaseOpened",
                recipient_hash="h" * 20), "notifier", rng)
            r = rng.random()
            if r < 0.85:
                took = timedelta(hours=rng.uniform(1, 7) if r < 0.65 else rng.uniform(9, 40))
                yield _child(case, LoopClosed(customer_id=cid, occurred_at=answered + took, case_id=f"case-{cid}",
                                              reply="Sorry!", resolved_by="care-anja",
                                              seconds_to_resolve=int(took.total_seconds())), "surveys", rng)
            if r >= 0.65:
                yield _child(case, CaseDeadlineBreached(customer_id=cid, occurred_at=deadline,
                                                        case_id=f"case-{cid}", deadline_at=deadline), "surveys", rng)

"""One valid sample per event type, built from python objects (strict mode).

Reused by tests, the kit, benchmarks and the demo. ``sample(ce_type)`` returns the sample for a type
(``sample_of(Model)`` returns it typed as the model);
``SAMPLES`` maps every registered ce_type to its sample. ``with_customer`` rebinds a sample to another
customer (and optionally another time) for generating streams.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

from loyalty_contracts.base import TENANT_SUBJECT, Event, Money
from loyalty_contracts.events import notifier, referrals, retail, surveys, tiers
from loyalty_contracts.registry import EVENT_TYPES

E = TypeVar("E", bound=Event)

T0 = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
CUSTOMER = "cust-0001"
FRIEND = "cust-0002"
EUR = "EUR"
HASH_A = "a1" * 32  # stand-ins for HMAC-SHA256 hex digests
HASH_B = "b2" * 32
HASH_C = "c3" * 32


def _eur(minor: int) -> Money:
    return Money(amount_minor=minor, currency=EUR)


_ALL: list[Event] = [
    retail.CustomerRegistered(
        customer_id=CUSTOMER,
        occurred_at=T0,
        name="Anna",
        locale="en",
        time_zone="Europe/Berlin",
        contacts=retail.Contacts(email="anna@example.com", phone="+491701234567", telegram_chat_id="123456789"),
        consents=retail.Consents(transactional=True, service=True, marketing=False, survey=True),
        referral_code="FRIEND-42",
        contact_hashes=retail.ContactHashes(email=HASH_A, phone=HASH_B),
        email_domain="example.com",
    ),
    retail.ConsentChanged(customer_id=CUSTOMER, occurred_at=T0, category="marketing", granted=True, channel="email"),
    retail.PurchaseMade(
        customer_id=CUSTOMER,
        occurred_at=T0,
        order_id="order-1001",
        store_id="store-berlin-1",
        sales_channel="web",
        lines=[
            retail.PurchaseLine(line_id="1", sku="DRILL-18V", category="tools", quantity=1, unit_price=_eur(8999)),
            retail.PurchaseLine(line_id="2", sku="BITS-SET", category="accessories", quantity=2, unit_price=_eur(1250)),
            retail.PurchaseLine(
                line_id="3",
                sku="DELIVERY",
                category=retail.DELIVERY_FEE_CATEGORY,
                quantity=1,
                unit_price=_eur(499),
            ),
        ],
        total=_eur(11998),
        referral_code="FRIEND-42",
        payment_fingerprint_hash=HASH_C,
        shipping_address_hash=HASH_B,
    ),
    retail.PurchaseRefunded(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=3),
        order_id="order-1001",
        refund_id="refund-1",
        full=False,
        lines=[retail.RefundedLine(line_id="2", quantity=1)],
        amount=_eur(1250),
    ),
    retail.DeliveryCompleted(customer_id=CUSTOMER, occurred_at=T0 + timedelta(days=1), order_id="order-1001"),
    retail.ReviewLeft(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=5),
        review_id="review-1",
        sku="DRILL-18V",
        category="tools",
        rating=5,
        text_length=420,
        has_photo=True,
    ),
    retail.FriendInvited(
        customer_id=CUSTOMER,
        occurred_at=T0,
        invitation_id="inv-1",
        invitee_contact_hash=HASH_C,
        channel="email",
        invitee_email_domain="example.org",
    ),
    retail.CommunityActivity(customer_id=CUSTOMER, occurred_at=T0, activity_id="act-1", kind="forum_answer"),
    retail.SurveyAnswered(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=3),
        survey_id="csat-delivery",
        request_id="req-1",
        score=4,
        comment=None,
        answer_channel="web",
    ),
    retail.CaseResolved(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=4),
        case_id="case-1",
        reply="Anna, we re-sent the missing drill bits today. Sorry for the trouble.",
        resolved_by="agent-7",
    ),
    retail.ImprovementShipped(
        customer_id=TENANT_SUBJECT,
        occurred_at=T0 + timedelta(days=20),
        improvement_id="impr-1",
        theme="delivery_speed",
        messages={"en": "Delivery is now 2 days faster.", "ru": "Доставка теперь на 2 дня быстрее."},
        since=T0,
    ),
    retail.ConsultationCompleted(
        customer_id=CUSTOMER,
        occurred_at=T0,
        consultation_id="cons-1",
        store_id="store-berlin-1",
        topic="choosing a drill",
    ),
    tiers.TierChanged(
        customer_id=CUSTOMER,
        occurred_at=T0,
        from_tier="novice",
        to_tier="connoisseur",
        direction="up",
        reason="threshold_reached",
        effective_at=T0,
        perks=[tiers.Perk(perk_id="early-access", kind="early_access", name="Early access to new tools")],
        points=1250,
    ),
    tiers.TierProgressMilestone(
        customer_id=CUSTOMER,
        occurred_at=T0,
        tier="connoisseur",
        next_tier="expert",
        fraction=0.8,
        points=4000,
        points_needed=1000,
    ),
    tiers.TierDowngradeScheduled(
        customer_id=CUSTOMER,
        occurred_at=T0,
        from_tier="connoisseur",
        to_tier="novice",
        effective_at=T0 + timedelta(days=30),
        points_needed=200,
    ),
    referrals.ReferralCodeIssued(
        customer_id=CUSTOMER,
        occurred_at=T0,
        code="K7MX3QPA",
        share_link="https://shop.example.com/invite/K7MX3QPA",
    ),
    referrals.ReferralConverted(
        customer_id=CUSTOMER,
        occurred_at=T0,
        referral_id="ref-1",
        referrer_id=CUSTOMER,
        referee_id=FRIEND,
        order_id="order-2001",
    ),
    referrals.ReferralRewardGranted(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=14),
        reward_id="rew-1",
        referral_id="ref-1",
        beneficiary_role="referrer",
        kind="points",
        points=300,
    ),
    referrals.ReferralRewardRevoked(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=20),
        reward_id="rew-1",
        referral_id="ref-1",
        beneficiary_role="referrer",
        kind="points",
        points=300,
        reason="order_refunded",
    ),
    referrals.ReferralRejected(
        customer_id=FRIEND,
        occurred_at=T0,
        referral_id="ref-2",
        referrer_id=CUSTOMER,
        reason="same_payment_fingerprint",
        detail="payment fingerprint matches the referrer",
    ),
    surveys.SurveyRequested(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=3),
        request_id="req-1",
        survey_id="csat-delivery",
        kind="csat",
        answer_token="tok_0123456789abcdef0123456789abcdef",
        answer_url="https://survey.example.com/a/tok_0123456789abcdef0123456789abcdef",
        expires_at=T0 + timedelta(days=10),
        trigger="delivery",
    ),
    surveys.FeedbackReceived(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=3),
        feedback_id="fb-1",
        request_id="req-1",
        survey_kind="csat",
        score=4,
        themes=["delivery_speed"],
        store_id="store-berlin-1",
        sales_channel="web",
        category="tools",
    ),
    surveys.FollowUpRequested(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=4),
        feedback_id="fb-1",
        request_id="req-2",
        question_key="what_kept_you_from_5",
        answer_token="tok_fedcba9876543210fedcba9876543210",
        answer_url="https://survey.example.com/a/tok_fedcba9876543210fedcba9876543210",
        expires_at=T0 + timedelta(days=11),
    ),
    surveys.DetractorCaseOpened(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=3),
        case_id="case-1",
        feedback_id="fb-2",
        score=2,
        deadline_at=T0 + timedelta(days=4),
    ),
    surveys.CaseDeadlineBreached(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=4),
        case_id="case-1",
        deadline_at=T0 + timedelta(days=4),
    ),
    surveys.LoopClosed(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=4),
        case_id="case-1",
        reply="Anna, we re-sent the missing drill bits today. Sorry for the trouble.",
        resolved_by="agent-7",
        seconds_to_resolve=86400,
    ),
    surveys.YouSaidWeDid(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=20),
        improvement_id="impr-1",
        theme="delivery_speed",
        message="Delivery is now 2 days faster.",
    ),
    surveys.CustomerAtRisk(
        customer_id=CUSTOMER,
        occurred_at=T0 + timedelta(days=5),
        balance=-3,
        last_entry_kind="detractor_score",
    ),
    notifier.NotificationDelivered(
        customer_id=CUSTOMER,
        occurred_at=T0,
        notification_id="ntf-1",
        source_event_id="0b7e4c1e-5d0c-4a61-9c53-4a3c3b1f2a10",
        source_event_type="loyalty.TierChanged.v1",
        channel="email",
        template="tier_changed",
        recipient_hash=HASH_A,
        attempts=1,
    ),
    notifier.NotificationFailed(
        customer_id=CUSTOMER,
        occurred_at=T0,
        notification_id="ntf-2",
        source_event_id="0b7e4c1e-5d0c-4a61-9c53-4a3c3b1f2a11",
        source_event_type="loyalty.SurveyRequested.v1",
        channel="sms",
        template="survey_csat",
        reason="retries_exhausted",
        detail="provider returned HTTP 500 six times",
        attempts=6,
    ),
    notifier.NotificationSuppressed(
        customer_id=CUSTOMER,
        occurred_at=T0,
        source_event_id="0b7e4c1e-5d0c-4a61-9c53-4a3c3b1f2a12",
        source_event_type="loyalty.SurveyRequested.v1",
        template="survey_request",
        category="survey",
        channel="sms",
        reason="contact_budget",
        detail="4 messages in 7 days (limit 4 for survey)",
    ),
]

SAMPLES: dict[str, Event] = {event.ce_type(): event for event in _ALL}

if set(SAMPLES) != set(EVENT_TYPES):  # pragma: no cover - keeps the samples complete
    raise RuntimeError(f"samples missing for {sorted(set(EVENT_TYPES) - set(SAMPLES))}")


def sample(ce_type: str) -> Event:
    return SAMPLES[ce_type]


def sample_of(model: type[E]) -> E:
    """The sample of a model class, typed as that class: ``sample_of(PurchaseMade).order_id``."""
    event = SAMPLES[model.ce_type()]
    assert isinstance(event, model)
    return event


def with_customer(event: E, customer_id: str, occurred_at: datetime | None = None) -> E:
    """A copy of ``event`` for another customer (and optionally another event time).

    Uses ``model_copy`` (no full revalidation, fast enough for generating millions of events), so the two
    replaced values are checked here.
    """
    if not isinstance(customer_id, str) or not 1 <= len(customer_id) <= 200:
        raise ValueError("customer_id must be a non-empty string of at most 200 characters")
    update: dict[str, object] = {"customer_id": customer_id}
    if occurred_at is not None:
        if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")
        update["occurred_at"] = occurred_at
    return event.model_copy(update=update)

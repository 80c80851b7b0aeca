"""Builders shared by the referrals tests: rules like the example program, events, and a log runner."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from loyalty_referrals.domain import (
    Effect,
    Feedback,
    Invitation,
    OrderLine,
    Purchase,
    ReferralBook,
    Refund,
    Registration,
    RejectReason,
    RewardSpec,
    Rules,
    VelocityRules,
    derive_code,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRET = b"test-secret-at-least-16-bytes"
TENANT = "acme-diy"


def days(n: float) -> timedelta:
    return timedelta(days=n)


def make_rules(**overrides: Any) -> Rules:
    rules = Rules(
        invitation_window_days=30,
        conversion_window_days=90,
        min_first_order_minor=3000,
        currency="EUR",
        excluded_categories=frozenset({"delivery_fee", "gift_card"}),
        referrer_reward=RewardSpec(kind="points", points=500),
        referee_reward=RewardSpec(kind="coupon", amount_minor=1000, currency="EUR"),
        hold_days=30,
        blocked_email_domains=frozenset({"mailinator.com"}),
        velocity=VelocityRules(period_days=30, max_conversions=10, max_order_value_minor=500_000),
        review_reasons=frozenset({RejectReason.VELOCITY_LIMIT}),
        clawback_referrer=True,
        clawback_referee=False,
        clawback_within_days=180,
    )
    return replace(rules, **overrides)


def new_book(**overrides: Any) -> ReferralBook:
    return ReferralBook(tenant=TENANT, rules=make_rules(**overrides))


def code_of(customer_id: str) -> str:
    return derive_code(SECRET, TENANT, customer_id)


def register(
    book: ReferralBook,
    customer_id: str,
    at: datetime,
    *,
    code: str | None = None,
    hashes: set[str] | None = None,
    domain: str | None = "example.org",
) -> list[Effect]:
    reg = Registration(customer_id, at, frozenset(hashes if hashes is not None else {f"h-{customer_id}"}), domain, code)
    return book.on_registered(reg, new_code=code_of(customer_id))


def invite(
    book: ReferralBook,
    referrer: str,
    invitee_hash: str,
    at: datetime,
    *,
    invitation_id: str | None = None,
    domain: str | None = None,
) -> list[Effect]:
    inv = Invitation(
        invitation_id or f"inv-{referrer}-{invitee_hash}-{at.isoformat()}", referrer, invitee_hash, at, "email", domain
    )
    return book.on_invited(inv)


def purchase(
    book: ReferralBook,
    customer_id: str,
    at: datetime,
    *,
    order_id: str | None = None,
    total: int = 5000,
    code: str | None = None,
    payment: str | None = None,
    address: str | None = None,
    lines: tuple[OrderLine, ...] = (),
) -> list[Effect]:
    p = Purchase(
        customer_id, order_id or f"o-{customer_id}-{at.isoformat()}", at, total, "EUR", lines, payment, address, code
    )
    return book.on_purchase(p)


def refund(
    book: ReferralBook, customer_id: str, order_id: str, at: datetime, *, full: bool = True, amount: int = 5000
) -> list[Effect]:
    return book.on_refund(Refund(customer_id, order_id, at, full, amount))


def nps(customer_id: str, at: datetime, score: int) -> Feedback:
    return Feedback(customer_id, at, "nps", score)

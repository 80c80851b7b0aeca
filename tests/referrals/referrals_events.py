"""Contract events for the referrals integration tests, built with full validation."""

from __future__ import annotations

import hashlib
from datetime import datetime

from loyalty_contracts.base import Money
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.retail import (
    Consents,
    ContactHashes,
    Contacts,
    CustomerRegistered,
    FriendInvited,
    PurchaseLine,
    PurchaseMade,
    PurchaseRefunded,
)
from loyalty_contracts.events.surveys import FeedbackReceived

TENANT = "acme-diy"


def contact_hash(customer_id: str) -> str:
    """Stand-in for the retailer's keyed hash of a customer's e-mail."""
    return hashlib.sha256(f"email:{customer_id}".encode()).hexdigest()


def env(data: object) -> Envelope:
    return Envelope.new(data, tenant=TENANT, source="/test/retailer")  # type: ignore[arg-type]


def registered(customer_id: str, at: datetime, *, code: str | None = None) -> Envelope:
    return env(
        CustomerRegistered(
            customer_id=customer_id,
            occurred_at=at,
            name=customer_id.title(),
            locale="en",
            time_zone="Europe/Berlin",
            contacts=Contacts(email=f"{customer_id}@example.org"),
            consents=Consents(transactional=True, service=True, marketing=True, survey=True),
            referral_code=code,
            contact_hashes=ContactHashes(email=contact_hash(customer_id)),
            email_domain="example.org",
        )
    )


def invited(referrer: str, invitee: str, at: datetime, invitation_id: str) -> Envelope:
    return env(
        FriendInvited(
            customer_id=referrer,
            occurred_at=at,
            invitation_id=invitation_id,
            invitee_contact_hash=contact_hash(invitee),
            channel="email",
        )
    )


def purchased(
    customer_id: str,
    order_id: str,
    at: datetime,
    amount_minor: int = 5000,
    *,
    code: str | None = None,
    address: str | None = None,
) -> Envelope:
    price = Money(amount_minor=amount_minor, currency="EUR")
    return env(
        PurchaseMade(
            customer_id=customer_id,
            occurred_at=at,
            order_id=order_id,
            store_id="web",
            sales_channel="web",
            lines=[PurchaseLine(line_id="1", sku="DRILL", category="tools", quantity=1, unit_price=price)],
            total=price,
            referral_code=code,
            shipping_address_hash=hashlib.sha256(f"addr:{address}".encode()).hexdigest() if address else None,
        )
    )


def refunded(customer_id: str, order_id: str, at: datetime, amount_minor: int = 5000) -> Envelope:
    return env(
        PurchaseRefunded(
            customer_id=customer_id,
            occurred_at=at,
            order_id=order_id,
            refund_id=f"rf-{order_id}",
            full=True,
            amount=Money(amount_minor=amount_minor, currency="EUR"),
        )
    )


def feedback(customer_id: str, at: datetime, score: int, feedback_id: str) -> Envelope:
    return env(
        FeedbackReceived(
            customer_id=customer_id, occurred_at=at, feedback_id=feedback_id, survey_kind="nps", score=score
        )
    )

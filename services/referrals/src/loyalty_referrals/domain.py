"""Pure referral rules: codes, attribution, conversion, holds, grants, refunds, fraud, says-vs-does.

No I/O here. The handler loads the slice of state a batch needs into a `ReferralBook`, feeds it the batch's
events in order, persists what the book marks dirty and emits the effects it returns. Tests feed a book a
whole event log in memory, which is also the reference model for the integration tests.

Rules (each is tested in tests/referrals/test_domain*.py):
- A referee's referrer is decided once, as soon as the referee's registration, first purchase and at least
  one claim are known, whatever order they arrive in (they travel on different topics and partitions).
  Competing claims: a code given at registration beats a code given at the first purchase, which beats an
  invitation; among invitations the earliest (invited_at, then invitation id) wins. Because the winner is a
  pure ordering of claims, the arrival order of the claims before the decision does not change it.
- An invitation only claims a customer who registered at or after the invitation and within the invitation
  window; customers who existed before the invitation are not new.
- Only the first purchase counts; it must reach the minimum qualifying value (excluded categories such as
  delivery fees and gift cards do not count) within the conversion window after registration.
- Fraud checks, in order: self-referral (same customer, shared contact hash, payment fingerprint seen on the
  referrer's orders, shipping address seen on the referrer's orders), a referral cycle (the referee is an
  ancestor of the referrer), a blocked email domain, velocity caps per referrer (count, then order value,
  over a rolling period). Reasons listed in `Rules.review_reasons` go to staff review instead of rejection.
- A converted referral holds both rewards until `hold_days` after the purchase (the return window). A refund
  that drops the first order under the minimum while held rejects the referral. After the grant, the same
  refund within the clawback window revokes the rewards the policy names (a reversal event per reward).
- Every reward is keyed by (referral, role) and a referee has at most one referral, so nothing pays twice.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import statistics
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from typing import Literal

# Readable aloud and unambiguous when hand-written: no 0/O, 1/I/L.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_VANITY = re.compile(r"^[A-Z0-9]{4,20}$")
_RESERVED_VANITY = frozenset({"ADMIN", "STAFF", "TEST", "FREE", "NULL", "NONE"})

REFERRAL_NAMESPACE = uuid.UUID("6f1c1f0e-4b7e-4d5e-9a43-2f0d0c6b8a11")


class RejectReason(StrEnum):
    """Reason codes of ReferralRejected (values are the contract's `RejectionReason`)."""

    UNKNOWN_CODE = "unknown_code"
    EXISTING_CUSTOMER = "existing_customer"
    OUTSIDE_ATTRIBUTION_WINDOW = "outside_attribution_window"
    BELOW_MINIMUM_ORDER = "below_minimum_order"
    FIRST_ORDER_REFUNDED = "first_order_refunded"
    SELF_REFERRAL = "self_referral"
    SAME_CONTACT = "same_contact"
    SAME_PAYMENT_FINGERPRINT = "same_payment_fingerprint"
    SAME_SHIPPING_ADDRESS = "same_shipping_address"
    REFERRAL_CYCLE = "referral_cycle"
    BLOCKED_DOMAIN = "blocked_domain"
    VELOCITY_LIMIT = "velocity_limit"
    REJECTED_BY_STAFF = "rejected_by_staff"

    @property
    def fraud(self) -> bool:
        return self in _FRAUD_REASONS


_FRAUD_REASONS = frozenset(
    {
        RejectReason.SELF_REFERRAL,
        RejectReason.SAME_CONTACT,
        RejectReason.SAME_PAYMENT_FINGERPRINT,
        RejectReason.SAME_SHIPPING_ADDRESS,
        RejectReason.REFERRAL_CYCLE,
        RejectReason.BLOCKED_DOMAIN,
        RejectReason.VELOCITY_LIMIT,
    }
)


class ClaimSource(IntEnum):
    """Where a claim came from; the lower value wins a competing claim."""

    CODE_AT_REGISTRATION = 0
    CODE_AT_PURCHASE = 1
    INVITATION = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class ReferralStatus(StrEnum):
    HELD = "held"  # converted, rewards pending until the return window has passed
    IN_REVIEW = "in_review"  # a reviewable fraud signal: staff approve or reject
    REWARDED = "rewarded"
    REJECTED = "rejected"
    REVOKED = "revoked"  # rewarded, then clawed back (at least one reward revoked)


class RewardStatus(StrEnum):
    PENDING = "pending"
    GRANTED = "granted"
    REJECTED = "rejected"
    REVOKED = "revoked"


Role = Literal["referrer", "referee"]
ROLES: tuple[Role, Role] = ("referrer", "referee")


@dataclass(frozen=True)
class RewardSpec:
    kind: Literal["points", "coupon", "perk"]
    points: int | None = None
    amount_minor: int | None = None
    currency: str | None = None
    perk: str | None = None


@dataclass(frozen=True)
class VelocityRules:
    period_days: int
    max_conversions: int
    max_order_value_minor: int


@dataclass(frozen=True)
class Rules:
    invitation_window_days: int
    conversion_window_days: int
    min_first_order_minor: int
    currency: str
    excluded_categories: frozenset[str]
    referrer_reward: RewardSpec
    referee_reward: RewardSpec
    hold_days: int
    blocked_email_domains: frozenset[str]
    velocity: VelocityRules
    review_reasons: frozenset[RejectReason]
    clawback_referrer: bool
    clawback_referee: bool
    clawback_within_days: int

    def reward_for(self, role: Role) -> RewardSpec:
        return self.referrer_reward if role == "referrer" else self.referee_reward

    def clawback_for(self, role: Role) -> bool:
        return self.clawback_referrer if role == "referrer" else self.clawback_referee


# ---------------------------------------------------------------------------------------------- codes


class InvalidCode(ValueError):
    """A referral or vanity code that cannot be used, with the reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"code {code!r}: {reason}")
        self.code = code
        self.reason = reason


def derive_code(secret: bytes, tenant: str, customer_id: str, length: int = 8, attempt: int = 0) -> str:
    """A customer's code: HMAC of the tenant secret, so it is stable and unguessable without the secret.

    `attempt` > 0 only when an earlier attempt collided with another customer's code in the tenant.
    """
    message = f"{tenant}\x00{customer_id}\x00{attempt}".encode()
    number = int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest(), "big")
    base = len(CODE_ALPHABET)
    chars = []
    for _ in range(length):
        number, index = divmod(number, base)
        chars.append(CODE_ALPHABET[index])
    return "".join(chars)


def normalize_code(raw: str) -> str:
    """How a typed or spoken code is compared: case, spaces and hyphens do not matter."""
    return re.sub(r"[\s\-]", "", raw).upper()


def share_link(template: str, code: str) -> str:
    return template.replace("{code}", code)


def validate_vanity_code(raw: str) -> str:
    code = normalize_code(raw)
    if not _VANITY.match(code):
        raise InvalidCode(raw, "a vanity code is 4 to 20 letters or digits")
    if code in _RESERVED_VANITY:
        raise InvalidCode(raw, "this word is reserved")
    return code


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """`str(uuid.uuid5(namespace, name))` without building a UUID object (ids are derived per event)."""
    digest = bytearray(hashlib.sha1(namespace.bytes + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def referral_id_for(tenant: str, referee_id: str) -> str:
    """One referral per referee per tenant: the id is derived, so a redelivery cannot make a second one."""
    return uuid5_text(REFERRAL_NAMESPACE, f"{tenant}\x00{referee_id}")


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class OrderLine:
    category: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True)
class Registration:
    customer_id: str
    at: datetime
    contact_hashes: frozenset[str] = frozenset()
    email_domain: str | None = None
    referral_code: str | None = None


@dataclass(frozen=True)
class Invitation:
    invitation_id: str
    referrer_id: str
    contact_hash: str
    at: datetime
    channel: str = "email"
    email_domain: str | None = None


@dataclass(frozen=True)
class Purchase:
    customer_id: str
    order_id: str
    at: datetime
    total_minor: int
    currency: str
    lines: tuple[OrderLine, ...] = ()
    payment_fingerprint: str | None = None
    shipping_address: str | None = None
    referral_code: str | None = None


@dataclass(frozen=True)
class Refund:
    customer_id: str
    order_id: str
    at: datetime
    full: bool
    amount_minor: int


@dataclass(frozen=True)
class Feedback:
    customer_id: str
    at: datetime
    kind: str
    score: int


def qualifying_value(purchase: Purchase, rules: Rules) -> int:
    """Order value that counts toward the minimum: the total less excluded lines; 0 in another currency."""
    if purchase.currency != rules.currency:
        return 0
    excluded = sum(
        line.quantity * line.unit_price_minor for line in purchase.lines if line.category in rules.excluded_categories
    )
    return max(0, purchase.total_minor - excluded)


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class FirstOrder:
    """The facts of a customer's first purchase that the referral decision needs."""

    order_id: str
    at: datetime
    value_minor: int  # qualifying value (excluded categories and other currencies do not count)
    payment_fingerprint: str | None = None
    shipping_address: str | None = None


@dataclass
class Customer:
    """What referrals knows about a customer (only keyed hashes, never contacts)."""

    customer_id: str
    registered_at: datetime | None = None
    contact_hashes: frozenset[str] = frozenset()
    email_domain: str | None = None
    payment_fingerprints: frozenset[str] = frozenset()
    shipping_addresses: frozenset[str] = frozenset()
    first_order: FirstOrder | None = None
    code: str | None = None
    # Refunds seen before this customer's referral was decided, by order id: (amount, full). They may
    # arrive before the purchase itself (another topic); the decision takes them into account.
    early_refunds: dict[str, tuple[int, bool]] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    referee_id: str
    referrer_id: str
    source: ClaimSource
    claimed_at: datetime
    invitation_id: str | None = None
    email_domain: str | None = None  # the invitee domain an invitation carried

    @property
    def rank(self) -> tuple[int, datetime, str, str]:
        return (int(self.source), self.claimed_at, self.invitation_id or "", self.referrer_id)


@dataclass(frozen=True)
class PendingCode:
    """A code a customer typed that no one owns yet: its owner's registration may not be consumed yet
    (another partition, a replay). It becomes a claim when the code is issued."""

    code: str  # normalized
    referee_id: str
    source: ClaimSource
    claimed_at: datetime


@dataclass
class Reward:
    role: Role
    beneficiary_id: str
    spec: RewardSpec
    status: RewardStatus = RewardStatus.PENDING
    granted_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass
class Referral:
    referral_id: str
    referrer_id: str
    referee_id: str
    source: ClaimSource
    claimed_at: datetime
    order_id: str
    order_value_minor: int
    converted_at: datetime  # the first purchase's time (the decision time)
    status: ReferralStatus
    reason: RejectReason | None = None
    reason_detail: str = ""
    hold_until: datetime | None = None
    refunded_minor: int = 0
    rewards: dict[str, Reward] = field(default_factory=dict)
    reviewed_by: str | None = None

    @property
    def pays(self) -> bool:
        """Counts as a relationship for cycles and velocity (everything not rejected at decision)."""
        return self.status != ReferralStatus.REJECTED


# ---------------------------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class CodeIssued:
    customer_id: str
    code: str
    at: datetime


@dataclass(frozen=True)
class Converted:
    referral_id: str
    referrer_id: str
    referee_id: str
    order_id: str
    source: ClaimSource
    at: datetime
    hold_until: datetime


@dataclass(frozen=True)
class HoldScheduled:
    referral_id: str
    referee_id: str
    due_at: datetime


@dataclass(frozen=True)
class SentToReview:
    referral_id: str
    referrer_id: str
    referee_id: str
    reason: RejectReason
    at: datetime


@dataclass(frozen=True)
class RewardGranted:
    referral_id: str
    referrer_id: str
    referee_id: str
    role: Role
    beneficiary_id: str
    spec: RewardSpec
    at: datetime


@dataclass(frozen=True)
class RewardRevoked:
    referral_id: str
    referrer_id: str
    referee_id: str
    role: Role
    beneficiary_id: str
    spec: RewardSpec
    reason: str
    at: datetime


@dataclass(frozen=True)
class Rejected:
    referral_id: str | None  # None when no referral exists (e.g. an unknown code)
    referrer_id: str | None
    referee_id: str
    reason: RejectReason
    at: datetime
    detail: str = ""


Effect = CodeIssued | Converted | HoldScheduled | SentToReview | RewardGranted | RewardRevoked | Rejected


class ReviewError(ValueError):
    """A staff review decision that does not apply (unknown referral, not in review)."""


# ---------------------------------------------------------------------------------------------- the book


@dataclass
class ReferralBook:
    """The slice of one tenant's referral state a batch needs, plus the rules that act on it.

    The handler fills it from the database; tests fill it by feeding events. Methods return effects and
    record which rows changed (`dirty_*`) so the handler writes only those.
    """

    tenant: str
    rules: Rules
    customers: dict[str, Customer] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)  # normalized code -> customer id
    invitations: dict[str, Invitation] = field(default_factory=dict)  # by invitation id
    claims: dict[str, list[Claim]] = field(default_factory=dict)  # by referee id
    referrals: dict[str, Referral] = field(default_factory=dict)  # by referee id
    referrer_of: dict[str, str] = field(default_factory=dict)  # referee -> referrer, paying referrals
    conversions: dict[str, list[tuple[datetime, int, str]]] = field(default_factory=dict)  # by referrer
    pending_codes: dict[str, list[PendingCode]] = field(default_factory=dict)  # by referee id
    new_pending: list[PendingCode] = field(default_factory=list)
    resolved_pending: list[PendingCode] = field(default_factory=list)
    dirty_customers: set[str] = field(default_factory=set)
    new_invitations: list[Invitation] = field(default_factory=list)
    new_claims: list[Claim] = field(default_factory=list)
    dirty_referrals: set[str] = field(default_factory=set)  # referee ids
    # Lookup indexes by contact hash, built on first use (the loader fills the dicts above directly).
    _customers_by_hash: dict[str, set[str]] | None = field(default=None, init=False, repr=False)
    _invitations_by_hash: dict[str, list[Invitation]] | None = field(default=None, init=False, repr=False)
    _pending_by_code: dict[str, list[PendingCode]] | None = field(default=None, init=False, repr=False)

    # -- helpers

    def customer(self, customer_id: str) -> Customer:
        found = self.customers.get(customer_id)
        if found is None:
            found = self.customers[customer_id] = Customer(customer_id)
        return found

    def resolve_code(self, raw: str | None) -> str | None:
        return None if raw is None else self.codes.get(normalize_code(raw))

    def referral_by_id(self, referral_id: str) -> Referral | None:
        for referral in self.referrals.values():
            if referral.referral_id == referral_id:
                return referral
        return None

    def customers_with_hash(self, contact_hash: str) -> list[Customer]:
        if self._customers_by_hash is None:
            self._customers_by_hash = {}
            for customer in self.customers.values():
                for h in customer.contact_hashes:
                    self._customers_by_hash.setdefault(h, set()).add(customer.customer_id)
        return [self.customers[c] for c in sorted(self._customers_by_hash.get(contact_hash, ()))]

    def invitations_for(self, contact_hash: str) -> list[Invitation]:
        if self._invitations_by_hash is None:
            self._invitations_by_hash = {}
            for invitation in self.invitations.values():
                self._invitations_by_hash.setdefault(invitation.contact_hash, []).append(invitation)
        return self._invitations_by_hash.get(contact_hash, [])

    def ancestors(self, customer_id: str) -> set[str]:
        """Everyone up the paying referral chain of a customer (bounded: the map may hold a cycle)."""
        seen: set[str] = set()
        current = self.referrer_of.get(customer_id)
        while current is not None and current not in seen:
            seen.add(current)
            current = self.referrer_of.get(current)
        return seen

    def _add_claim(self, claim: Claim) -> bool:
        existing = self.claims.setdefault(claim.referee_id, [])
        key = (claim.source, claim.referrer_id, claim.invitation_id)
        if any((c.source, c.referrer_id, c.invitation_id) == key for c in existing):
            return False
        existing.append(claim)
        self.new_claims.append(claim)
        return True

    def _invitation_claims(self, customer: Customer, invitation: Invitation) -> Claim | None:
        window = timedelta(days=self.rules.invitation_window_days)
        if (
            customer.registered_at is None
            or invitation.contact_hash not in customer.contact_hashes
            or customer.customer_id in self.referrals  # the decision is already made
            or not (invitation.at <= customer.registered_at <= invitation.at + window)
        ):
            return None
        return Claim(
            referee_id=customer.customer_id,
            referrer_id=invitation.referrer_id,
            source=ClaimSource.INVITATION,
            claimed_at=invitation.at,
            invitation_id=invitation.invitation_id,
            email_domain=invitation.email_domain,
        )

    # -- events

    def issue_code(self, customer_id: str, code: str, at: datetime) -> list[Effect]:
        customer = self.customer(customer_id)
        if customer.code is not None:
            return []
        customer.code = code
        normalized = normalize_code(code)
        self.codes[normalized] = customer_id
        self.dirty_customers.add(customer_id)
        effects: list[Effect] = [CodeIssued(customer_id, code, at)]
        # Friends who typed this code before it was issued (as consumed) now have their claim.
        waiting = sorted(self._pending_for_code().pop(normalized, ()), key=lambda p: (p.referee_id, p.source))
        for pending in waiting:
            self.pending_codes[pending.referee_id].remove(pending)
            self.resolved_pending.append(pending)
            self._add_claim(Claim(pending.referee_id, customer_id, pending.source, pending.claimed_at))
            effects += self._maybe_decide(self.customer(pending.referee_id))
        return effects

    def _claim_code(self, referee_id: str, raw: str, source: ClaimSource, at: datetime) -> None:
        referrer = self.resolve_code(raw)
        if referrer is not None:
            self._add_claim(Claim(referee_id, referrer, source, at))
            return
        pending = PendingCode(normalize_code(raw), referee_id, source, at)
        if self.add_pending(pending):
            self.new_pending.append(pending)

    def add_pending(self, pending: PendingCode) -> bool:
        """Remember a code typed before its owner is known (also used by the loader); False if already known."""
        waiting = self.pending_codes.setdefault(pending.referee_id, [])
        if pending in waiting:
            return False
        waiting.append(pending)
        if self._pending_by_code is not None:
            self._pending_by_code.setdefault(pending.code, []).append(pending)
        return True

    def _pending_for_code(self) -> dict[str, list[PendingCode]]:
        # Built once per book: scanning every referee's pending list per issued code was quadratic per batch.
        if self._pending_by_code is None:
            self._pending_by_code = {}
            for waiting in self.pending_codes.values():
                for pending in waiting:
                    self._pending_by_code.setdefault(pending.code, []).append(pending)
        return self._pending_by_code

    def on_registered(self, reg: Registration, new_code: str | None = None) -> list[Effect]:
        customer = self.customer(reg.customer_id)
        effects: list[Effect] = []
        if customer.registered_at is not None:
            return effects  # a second registration of a known customer changes nothing
        customer.registered_at = reg.at
        customer.contact_hashes = customer.contact_hashes | reg.contact_hashes
        if self._customers_by_hash is not None:
            for h in reg.contact_hashes:
                self._customers_by_hash.setdefault(h, set()).add(customer.customer_id)
        customer.email_domain = reg.email_domain.lower() if reg.email_domain else None
        self.dirty_customers.add(customer.customer_id)
        if new_code is not None:
            effects += self.issue_code(customer.customer_id, new_code, reg.at)
        if reg.referral_code is not None:
            self._claim_code(reg.customer_id, reg.referral_code, ClaimSource.CODE_AT_REGISTRATION, reg.at)
        matching = [inv for h in sorted(customer.contact_hashes) for inv in self.invitations_for(h)]
        for invitation in matching:
            claim = self._invitation_claims(customer, invitation)
            if claim is not None:
                self._add_claim(claim)
        return effects + self._maybe_decide(customer)

    def on_invited(self, invitation: Invitation) -> list[Effect]:
        if invitation.invitation_id in self.invitations:
            return []
        self.invitations[invitation.invitation_id] = invitation
        self.new_invitations.append(invitation)
        if self._invitations_by_hash is not None:
            self._invitations_by_hash.setdefault(invitation.contact_hash, []).append(invitation)
        # The invitee may already have registered, even bought (their events travel on other partitions).
        effects: list[Effect] = []
        for customer in self.customers_with_hash(invitation.contact_hash):
            claim = self._invitation_claims(customer, invitation)
            if claim is not None:
                self._add_claim(claim)
                effects += self._maybe_decide(customer)
        return effects

    def on_purchase(self, purchase: Purchase) -> list[Effect]:
        customer = self.customer(purchase.customer_id)
        if customer.first_order is not None:
            self._remember_payment(customer, purchase)
            return []  # only the first purchase counts
        customer.first_order = FirstOrder(
            purchase.order_id,
            purchase.at,
            qualifying_value(purchase, self.rules),
            purchase.payment_fingerprint,
            purchase.shipping_address,
        )
        self.dirty_customers.add(customer.customer_id)
        effects: list[Effect] = []
        if purchase.referral_code is not None:
            # Kept even before the registration is known: it may arrive later on its own topic.
            self._claim_code(customer.customer_id, purchase.referral_code, ClaimSource.CODE_AT_PURCHASE, purchase.at)
        effects += self._maybe_decide(customer)
        self._remember_payment(customer, purchase)
        return effects

    def _remember_payment(self, customer: Customer, purchase: Purchase) -> None:
        added_fp = purchase.payment_fingerprint and purchase.payment_fingerprint not in customer.payment_fingerprints
        added_ad = purchase.shipping_address and purchase.shipping_address not in customer.shipping_addresses
        if added_fp:
            customer.payment_fingerprints = customer.payment_fingerprints | {purchase.payment_fingerprint or ""}
        if added_ad:
            customer.shipping_addresses = customer.shipping_addresses | {purchase.shipping_address or ""}
        if added_fp or added_ad:
            self.dirty_customers.add(customer.customer_id)

    def winning_claim(self, referee_id: str) -> Claim | None:
        claims = self.claims.get(referee_id)
        return min(claims, key=lambda c: c.rank) if claims else None

    def _maybe_decide(self, referee: Customer) -> list[Effect]:
        """Decide once the three facts are known, in whatever order they arrived: the registration,
        the first purchase and at least one claim (events travel on different topics)."""
        if referee.customer_id in self.referrals or referee.registered_at is None or referee.first_order is None:
            return []
        if not self.claims.get(referee.customer_id):
            # A code no one owns yet stays pending (its owner's registration may still come, e.g. in a
            # replay); rejecting it now would depend on arrival order. The API counts unresolved codes.
            return []
        return self._decide(referee, referee.first_order)

    def _decide(self, referee: Customer, purchase: FirstOrder) -> list[Effect]:
        claim = self.winning_claim(referee.customer_id)
        assert claim is not None
        value = purchase.value_minor
        verdict = self.rejection_reason(referee, claim, purchase)
        already_refunded = min(value, referee.early_refunds.get(purchase.order_id, (0, False))[0])
        reason, detail = verdict if verdict is not None else (None, "")
        referral = Referral(
            referral_id=referral_id_for(self.tenant, referee.customer_id),
            referrer_id=claim.referrer_id,
            referee_id=referee.customer_id,
            source=claim.source,
            claimed_at=claim.claimed_at,
            order_id=purchase.order_id,
            order_value_minor=value,
            converted_at=purchase.at,
            status=ReferralStatus.HELD,
            reason=reason,
            reason_detail=detail,
            refunded_minor=already_refunded,
            rewards={
                role: Reward(
                    role,
                    claim.referrer_id if role == "referrer" else referee.customer_id,
                    self.rules.reward_for(role),
                )
                for role in ROLES
            },
        )
        self.referrals[referee.customer_id] = referral
        self.dirty_referrals.add(referee.customer_id)
        if reason is not None and reason not in self.rules.review_reasons:
            referral.status = ReferralStatus.REJECTED
            for reward in referral.rewards.values():
                reward.status = RewardStatus.REJECTED
            return [
                Rejected(referral.referral_id, referral.referrer_id, referral.referee_id, reason, purchase.at, detail)
            ]
        self._count_conversion(referral)
        if reason is not None:
            referral.status = ReferralStatus.IN_REVIEW
            return [SentToReview(referral.referral_id, referral.referrer_id, referral.referee_id, reason, purchase.at)]
        return self._convert(referral)

    def _count_conversion(self, referral: Referral) -> None:
        self.referrer_of[referral.referee_id] = referral.referrer_id
        self.conversions.setdefault(referral.referrer_id, []).append(
            (referral.converted_at, referral.order_value_minor, referral.referral_id)
        )

    def _convert(self, referral: Referral) -> list[Effect]:
        referral.status = ReferralStatus.HELD
        referral.hold_until = referral.converted_at + timedelta(days=self.rules.hold_days)
        return [
            Converted(
                referral.referral_id,
                referral.referrer_id,
                referral.referee_id,
                referral.order_id,
                referral.source,
                referral.converted_at,
                referral.hold_until,
            ),
            HoldScheduled(referral.referral_id, referral.referee_id, referral.hold_until),
        ]

    def rejection_reason(
        self, referee: Customer, claim: Claim, purchase: FirstOrder
    ) -> tuple[RejectReason, str] | None:
        """The first rule a would-be conversion breaks (reason, detail without PII), or None.

        Order matters: hard rules first, then fraud signals, velocity last (it depends on the others).
        """
        rules = self.rules
        referrer = self.customers.get(claim.referrer_id) or Customer(claim.referrer_id)
        if claim.referrer_id == referee.customer_id:
            return RejectReason.SELF_REFERRAL, "the referrer is the referee"
        value = purchase.value_minor
        if referee.registered_at is None or purchase.at < referee.registered_at:
            return RejectReason.EXISTING_CUSTOMER, "the first purchase came before the registration"
        if purchase.at - referee.registered_at > timedelta(days=rules.conversion_window_days):
            return RejectReason.OUTSIDE_ATTRIBUTION_WINDOW, f"first purchase after {rules.conversion_window_days} days"
        if value < rules.min_first_order_minor:
            return RejectReason.BELOW_MINIMUM_ORDER, f"qualifying value {value} < {rules.min_first_order_minor}"
        refunded, full = referee.early_refunds.get(purchase.order_id, (0, False))
        if full or value - refunded < rules.min_first_order_minor:
            return RejectReason.FIRST_ORDER_REFUNDED, "refunded before the referral was decided"
        if referee.customer_id in self.ancestors(claim.referrer_id):
            return RejectReason.REFERRAL_CYCLE, "the referee is up the referrer's referral chain"
        if referrer.contact_hashes & referee.contact_hashes:
            return RejectReason.SAME_CONTACT, "a contact hash matches the referrer"
        if purchase.payment_fingerprint and purchase.payment_fingerprint in referrer.payment_fingerprints:
            return RejectReason.SAME_PAYMENT_FINGERPRINT, "payment fingerprint seen on the referrer's orders"
        if purchase.shipping_address and purchase.shipping_address in referrer.shipping_addresses:
            return RejectReason.SAME_SHIPPING_ADDRESS, "shipping address seen on the referrer's orders"
        domains = {d.lower() for d in (referee.email_domain, claim.email_domain) if d}
        blocked = domains & rules.blocked_email_domains
        if blocked:
            return RejectReason.BLOCKED_DOMAIN, f"blocked domain {sorted(blocked)[0]}"
        velocity = rules.velocity
        period_start = purchase.at - timedelta(days=velocity.period_days)
        recent = [
            amount for at, amount, _ in self.conversions.get(claim.referrer_id, []) if period_start < at <= purchase.at
        ]
        if len(recent) + 1 > velocity.max_conversions:
            return RejectReason.VELOCITY_LIMIT, (
                f"count: more than {velocity.max_conversions} conversions in {velocity.period_days} days"
            )
        if sum(recent) + value > velocity.max_order_value_minor:
            return RejectReason.VELOCITY_LIMIT, (
                f"amount: referred order value over {velocity.max_order_value_minor} in {velocity.period_days} days"
            )
        return None

    def on_hold_expired(self, referee_id: str, now: datetime) -> list[Effect]:
        """The durable timer fired: grant both rewards if the referral is still held and the window passed."""
        referral = self.referrals.get(referee_id)
        if referral is None or referral.status != ReferralStatus.HELD:
            return []
        if referral.hold_until is None or now < referral.hold_until:
            return []
        return self._grant(referral, referral.hold_until)

    def _grant(self, referral: Referral, at: datetime) -> list[Effect]:
        referral.status = ReferralStatus.REWARDED
        self.dirty_referrals.add(referral.referee_id)
        effects: list[Effect] = []
        for role in ROLES:
            reward = referral.rewards[role]
            if reward.status != RewardStatus.PENDING:
                continue
            reward.status = RewardStatus.GRANTED
            reward.granted_at = at
            effects.append(
                RewardGranted(
                    referral.referral_id,
                    referral.referrer_id,
                    referral.referee_id,
                    role,
                    reward.beneficiary_id,
                    reward.spec,
                    at,
                )
            )
        return effects

    def on_refund(self, refund: Refund) -> list[Effect]:
        referral = self.referrals.get(refund.customer_id)
        if referral is None:
            customer = self.customer(refund.customer_id)
            amount, full = customer.early_refunds.get(refund.order_id, (0, False))
            customer.early_refunds[refund.order_id] = (amount + refund.amount_minor, full or refund.full)
            self.dirty_customers.add(customer.customer_id)
            return []
        if referral.order_id != refund.order_id:
            return []
        if referral.status in (ReferralStatus.REJECTED, ReferralStatus.REVOKED):
            return []
        referral.refunded_minor = min(referral.order_value_minor, referral.refunded_minor + refund.amount_minor)
        self.dirty_referrals.add(referral.referee_id)
        remaining = 0 if refund.full else referral.order_value_minor - referral.refunded_minor
        if remaining >= self.rules.min_first_order_minor:
            return []
        effects: list[Effect] = []
        if (
            referral.status == ReferralStatus.HELD
            and referral.hold_until is not None
            and refund.at >= referral.hold_until
        ):
            # The window had passed by event time; the timer just had not fired yet. Grant, then claw back,
            # so the outcome does not depend on timer lag.
            effects += self._grant(referral, referral.hold_until)
        if referral.status in (ReferralStatus.HELD, ReferralStatus.IN_REVIEW):
            referral.status = ReferralStatus.REJECTED
            referral.reason = RejectReason.FIRST_ORDER_REFUNDED
            for reward in referral.rewards.values():
                reward.status = RewardStatus.REJECTED
            effects.append(
                Rejected(
                    referral.referral_id,
                    referral.referrer_id,
                    referral.referee_id,
                    RejectReason.FIRST_ORDER_REFUNDED,
                    refund.at,
                )
            )
            return effects
        # Rewarded. A refund dated inside the hold means the grant came early (the timer clock ran ahead of
        # this customer's events): as if rejected in time, both sides lose the rewards. Later refunds claw
        # back per policy, inside the clawback window.
        inside_hold = referral.hold_until is not None and refund.at < referral.hold_until
        if not inside_hold and refund.at - referral.converted_at > timedelta(days=self.rules.clawback_within_days):
            return effects
        for role in ROLES:
            reward = referral.rewards[role]
            if reward.status != RewardStatus.GRANTED or not (inside_hold or self.rules.clawback_for(role)):
                continue
            reward.status = RewardStatus.REVOKED
            reward.revoked_at = refund.at
            referral.status = ReferralStatus.REVOKED
            effects.append(
                RewardRevoked(
                    referral.referral_id,
                    referral.referrer_id,
                    referral.referee_id,
                    role,
                    reward.beneficiary_id,
                    reward.spec,
                    "first_order_refunded",
                    refund.at,
                )
            )
        return effects

    def review(self, referral_id: str, approve: bool, staff: str, at: datetime) -> list[Effect]:
        """A staff decision on a held case: approve (hold, then grant as usual) or reject."""
        referral = self.referral_by_id(referral_id)
        if referral is None:
            raise ReviewError(f"referral {referral_id} is not known")
        if referral.status != ReferralStatus.IN_REVIEW:
            raise ReviewError(f"referral {referral_id} is {referral.status.value}, not in review")
        referral.reviewed_by = staff
        self.dirty_referrals.add(referral.referee_id)
        if approve:
            return self._convert(referral)
        flagged = referral.reason.value if referral.reason else "unknown"
        referral.status = ReferralStatus.REJECTED
        referral.reason = RejectReason.REJECTED_BY_STAFF
        referral.reason_detail = f"held for {flagged} ({referral.reason_detail}); rejected by {staff}"
        for reward in referral.rewards.values():
            reward.status = RewardStatus.REJECTED
        return [
            Rejected(
                referral.referral_id,
                referral.referrer_id,
                referral.referee_id,
                RejectReason.REJECTED_BY_STAFF,
                at,
                referral.reason_detail,
            )
        ]


# ---------------------------------------------------------------------------------------------- reports


REPORT_PERIOD = timedelta(days=30)  # the default period of the reports and the gap gauge


def is_promoter(feedback: Feedback) -> bool:
    return feedback.kind == "nps" and 9 <= feedback.score <= 10


@dataclass(frozen=True)
class SaysVsDoes:
    respondents: int
    promoters: int
    promoter_share: float  # "says": share of NPS respondents who would recommend
    promoters_who_referred: int
    promoter_referral_rate: float  # "does": share of promoters whose friend converted within N days
    customers: int
    customers_who_referred: int
    customer_referral_rate: float  # baseline: share of all customers whose friend converted in the period
    gap: float  # says minus does, in share points


def says_vs_does(
    feedback: Iterable[Feedback],
    conversions: Iterable[tuple[str, datetime]],
    customers: int,
    period_start: datetime,
    period_end: datetime,
    within_days: int,
) -> SaysVsDoes:
    """Per tenant and period: would-recommend (NPS 9-10) versus did-recommend (a friend converted).

    A promoter "did" if a friend of theirs converted between their promoter answer and `within_days` after it.
    `conversions` are (referrer id, converted at) of paying referrals; `customers` is the tenant's customer
    count at period end (the baseline denominator).
    """
    window = timedelta(days=within_days)
    latest: dict[str, Feedback] = {}
    for item in feedback:
        if item.kind != "nps" or not (period_start <= item.at < period_end):
            continue
        if item.customer_id not in latest or item.at > latest[item.customer_id].at:
            latest[item.customer_id] = item
    by_referrer: dict[str, list[datetime]] = {}
    for referrer, at in conversions:
        by_referrer.setdefault(referrer, []).append(at)
    promoters = [f for f in latest.values() if is_promoter(f)]
    did = sum(1 for f in promoters if any(f.at <= at <= f.at + window for at in by_referrer.get(f.customer_id, [])))
    referred = sum(1 for times in by_referrer.values() if any(period_start <= at < period_end + window for at in times))
    promoter_share = _ratio(len(promoters), len(latest))
    promoter_rate = _ratio(did, len(promoters))
    return SaysVsDoes(
        respondents=len(latest),
        promoters=len(promoters),
        promoter_share=promoter_share,
        promoters_who_referred=did,
        promoter_referral_rate=promoter_rate,
        customers=customers,
        customers_who_referred=referred,
        customer_referral_rate=_ratio(referred, customers),
        gap=round(promoter_share - promoter_rate, 4),
    )


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


FUNNEL_STAGES = ("invited", "registered", "first_purchase", "rewarded", "revoked")


@dataclass(frozen=True)
class Funnel:
    counts: dict[str, int]
    rates: dict[str, float]  # stage -> share of the previous stage
    median_days_to_convert: float | None


def funnel(counts: dict[str, int], days_to_convert: Sequence[float]) -> Funnel:
    missing = [s for s in FUNNEL_STAGES if s not in counts]
    if missing:
        raise ValueError(f"funnel counts lack {missing}")
    rates = {stage: _ratio(counts[stage], counts[previous]) for previous, stage in itertools.pairwise(FUNNEL_STAGES)}
    median = round(statistics.median(days_to_convert), 2) if days_to_convert else None
    return Funnel(dict(counts), rates, median)

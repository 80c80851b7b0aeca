"""Results of the referrals service.

ReferralRewardGranted / ReferralRewardRevoked with ``kind="points"`` carry status points that the tiers
service books (and reverses) in its ledger; ``reward_id`` links a revocation to its grant.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from loyalty_contracts.base import Event, Identifier, Money

_REWARD_FIELD = {"points": "points", "coupon": "coupon_value", "perk": "perk_id"}


def _check_reward_payload(kind: str, points: int | None, coupon_value: Money | None, perk_id: str | None) -> None:
    """Exactly the field matching ``kind`` is set, so a consumer never has to guess."""
    present = {"points": points is not None, "coupon": coupon_value is not None, "perk": perk_id is not None}
    if not present[kind] or sum(present.values()) != 1:
        raise ValueError(f"kind {kind!r} needs exactly the field {_REWARD_FIELD[kind]!r} set")

BeneficiaryRole = Literal["referrer", "referee"]
RewardKind = Literal["points", "coupon", "perk"]
RejectionReason = Literal[
    "self_referral",
    "same_contact",
    "same_payment_fingerprint",
    "same_shipping_address",
    "existing_customer",
    "already_referred",
    "unknown_code",
    "outside_attribution_window",
    "below_minimum_order",
    "velocity_limit",
    "referral_cycle",
    "blocked_domain",
    "rejected_by_staff",
    "first_order_refunded",
]


class ReferralCodeIssued(Event):
    """A customer's own referral code and shareable link, so the notifier can send them. customer_id owns it."""

    event_type: ClassVar[str] = "ReferralCodeIssued"
    event_version: ClassVar[int] = 1

    code: str = Field(
        min_length=4, max_length=32, description="The code to share (upper-case letters and digits, no 0/O/1/I/L)."
    )
    share_link: str = Field(min_length=1, max_length=2000, description="Link the customer shares with friends.")
    vanity: bool = Field(default=False, description="True for a vanity code assigned by staff.")


class ReferralConverted(Event):
    """A referred friend made a qualifying first purchase. customer_id is the referrer."""

    event_type: ClassVar[str] = "ReferralConverted"
    event_version: ClassVar[int] = 1

    referral_id: Identifier = Field(description="Referral id (one per referee).")
    referrer_id: Identifier = Field(description="Customer who invited.")
    referee_id: Identifier = Field(description="Customer who was invited and bought.")
    order_id: Identifier = Field(description="The referee's qualifying first order.")


class ReferralRewardGranted(Event):
    """A reward was granted to one side of a referral. customer_id is the beneficiary.

    Exactly one of points / coupon_value / perk_id is set, the one matching ``kind``.
    """

    event_type: ClassVar[str] = "ReferralRewardGranted"
    event_version: ClassVar[int] = 1

    reward_id: Identifier = Field(description="Reward id, unique per tenant.")
    referral_id: Identifier = Field(description="Referral the reward is for.")
    beneficiary_role: BeneficiaryRole = Field(description="Which side of the referral receives it.")
    kind: RewardKind = Field(description="'points' (status points booked by tiers), 'coupon' or 'perk'.")
    points: int | None = Field(default=None, ge=0, description="Status points, when kind is 'points'.")
    coupon_value: Money | None = Field(default=None, description="Coupon value, when kind is 'coupon'.")
    perk_id: Identifier | None = Field(default=None, description="Perk id, when kind is 'perk'.")

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> ReferralRewardGranted:
        _check_reward_payload(self.kind, self.points, self.coupon_value, self.perk_id)
        return self


class ReferralRewardRevoked(Event):
    """A granted reward was clawed back (refund, fraud). customer_id is the beneficiary."""

    event_type: ClassVar[str] = "ReferralRewardRevoked"
    event_version: ClassVar[int] = 1

    reward_id: Identifier = Field(description="ReferralRewardGranted.reward_id being revoked.")
    referral_id: Identifier = Field(description="Referral the reward was for.")
    beneficiary_role: BeneficiaryRole = Field(description="Which side of the referral loses it.")
    kind: RewardKind = Field(description="Kind of the revoked reward.")
    points: int | None = Field(default=None, ge=0, description="Status points to reverse, when kind is 'points'.")
    coupon_value: Money | None = Field(default=None, description="Coupon value, when kind is 'coupon'.")
    perk_id: Identifier | None = Field(default=None, description="Perk id, when kind is 'perk'.")
    reason: Identifier = Field(description="Why, e.g. 'order_refunded', 'fraud_confirmed'.")

    @model_validator(mode="after")
    def _payload_matches_kind(self) -> ReferralRewardRevoked:
        _check_reward_payload(self.kind, self.points, self.coupon_value, self.perk_id)
        return self


class ReferralRejected(Event):
    """A referral claim was rejected. customer_id is the referee (or the claimant)."""

    event_type: ClassVar[str] = "ReferralRejected"
    event_version: ClassVar[int] = 1

    referral_id: Identifier = Field(description="Id of the rejected referral claim.")
    referrer_id: Identifier | None = Field(default=None, description="Claimed referrer, when known.")
    reason: RejectionReason = Field(description="Reason code.")
    detail: str | None = Field(default=None, max_length=500, description="Human-readable detail (no PII).")

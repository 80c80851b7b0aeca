"""The `referrals:` section of a retailer program file, as a validated pydantic model.

The kit's `load_programs(dir, "referrals", ReferralsProgram)` validates it and reports every error as
(file, path inside the file, reason). Rules that need more than one field are model validators so their
errors still carry a path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loyalty_referrals.domain import (
    CODE_ALPHABET,
    RejectReason,
    RewardSpec,
    Rules,
    VelocityRules,
)

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodesSection(_Section):
    """How customers' own referral codes are made and shared."""

    secret_env: str = Field(
        description="Name of the environment variable holding the tenant's HMAC secret; codes are "
        "HMAC(secret, customer id), so they are stable per customer and unguessable without the secret.",
    )
    length: int = Field(default=8, ge=6, le=16, description=f"Characters per code, from {CODE_ALPHABET}.")
    link_template: str = Field(description="Shareable link; `{code}` is replaced by the customer's code.")
    vanity_codes: bool = Field(default=False, description="Whether staff may assign vanity codes (unique per tenant).")

    @field_validator("secret_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError("must be an environment variable name (A-Z, 0-9, _), not the secret itself")
        return value

    @field_validator("link_template")
    @classmethod
    def _template(cls, value: str) -> str:
        placeholders = re.findall(r"{([^{}]*)}", value)
        if placeholders != ["code"]:
            raise ValueError("must contain the placeholder {code} exactly once and no other placeholder")
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an absolute http(s) link")
        return value


class AttributionSection(_Section):
    invitation_window_days: int = Field(
        default=30,
        ge=1,
        le=365,
        description="A pending invitation matches a registration at most this many days later.",
    )
    conversion_window_days: int = Field(
        default=90, ge=1, le=730, description="The referee's first purchase must come this many days after the claim."
    )


class MinimumOrder(_Section):
    amount_minor: int = Field(ge=0, description="Minimum qualifying value of the referee's first order.")
    currency: str

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not _CURRENCY.match(value):
            raise ValueError("must be an ISO 4217 code such as EUR")
        return value


class PointsReward(_Section):
    kind: Literal["points"]
    points: int = Field(gt=0, le=1_000_000, description="Status points, granted through an event tiers consumes.")


class CouponReward(_Section):
    kind: Literal["coupon"]
    amount_minor: int = Field(gt=0)
    currency: str

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not _CURRENCY.match(value):
            raise ValueError("must be an ISO 4217 code such as EUR")
        return value


class PerkReward(_Section):
    kind: Literal["perk"]
    perk: str = Field(min_length=1, max_length=80, description="Perk identifier the notifier/tiers understand.")


Reward = Annotated[PointsReward | CouponReward | PerkReward, Field(discriminator="kind")]


class RewardsSection(_Section):
    referrer: Reward
    referee: Reward
    hold_days: int = Field(
        default=30, ge=0, le=365, description="Rewards stay pending this long after conversion (the return window)."
    )


class VelocitySection(_Section):
    period_days: int = Field(default=30, ge=1, le=365)
    max_conversions: int = Field(default=10, ge=1, description="Conversions per referrer per rolling period.")
    max_order_value_minor: int = Field(
        ge=1, description="Sum of referees' first-order values per referrer per rolling period."
    )


class FraudSection(_Section):
    blocked_email_domains: list[str] = Field(default_factory=list)
    velocity: VelocitySection
    review_instead_of_reject: list[RejectReason] = Field(
        default_factory=list,
        description="Reason codes that put the case in the staff review queue instead of rejecting it.",
    )

    @field_validator("blocked_email_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        cleaned = [d.strip().lower() for d in value]
        for domain in cleaned:
            if not _DOMAIN.match(domain):
                raise ValueError(f"{domain!r} is not a domain name")
        return cleaned

    @field_validator("review_instead_of_reject")
    @classmethod
    def _reviewable(cls, value: list[RejectReason]) -> list[RejectReason]:
        never = {RejectReason.SELF_REFERRAL, RejectReason.REFERRAL_CYCLE}
        bad = [r.value for r in value if r in never or not r.fraud]
        if bad:
            raise ValueError(f"these reasons are always rejected, never reviewed: {', '.join(bad)}")
        return value


class ClawbackSection(_Section):
    revoke_referrer: bool = Field(default=True, description="Revoke the referrer's granted reward on a full refund.")
    revoke_referee: bool = Field(default=False, description="Revoke the referee's granted reward on a full refund.")
    within_days: int = Field(
        default=180,
        ge=0,
        le=730,
        description="A full refund of the first order this many days after it still revokes.",
    )


class SaysVsDoesSection(_Section):
    referral_within_days: int = Field(
        default=90, ge=1, le=365, description="A promoter 'did' recommend if a friend converted this many days after."
    )


class ReferralsProgram(_Section):
    """The whole `referrals:` section."""

    codes: CodesSection
    attribution: AttributionSection = AttributionSection()
    min_first_order: MinimumOrder
    excluded_categories: list[str] = Field(
        default_factory=lambda: ["delivery_fee", "gift_card"],
        description="Order line categories that do not count toward the minimum first-order value.",
    )
    rewards: RewardsSection
    fraud: FraudSection
    clawback: ClawbackSection = ClawbackSection()
    says_vs_does: SaysVsDoesSection = SaysVsDoesSection()

    @model_validator(mode="after")
    def _one_currency(self) -> ReferralsProgram:
        currencies = {self.min_first_order.currency}
        for reward in (self.rewards.referrer, self.rewards.referee):
            if isinstance(reward, CouponReward):
                currencies.add(reward.currency)
        if len(currencies) > 1:
            raise ValueError(f"min_first_order and coupon rewards must share one currency, got {sorted(currencies)}")
        return self

    def rules(self) -> Rules:
        """The plain-data rules the pure domain works with."""
        return Rules(
            invitation_window_days=self.attribution.invitation_window_days,
            conversion_window_days=self.attribution.conversion_window_days,
            min_first_order_minor=self.min_first_order.amount_minor,
            currency=self.min_first_order.currency,
            excluded_categories=frozenset(self.excluded_categories),
            referrer_reward=_reward_spec(self.rewards.referrer),
            referee_reward=_reward_spec(self.rewards.referee),
            hold_days=self.rewards.hold_days,
            blocked_email_domains=frozenset(self.fraud.blocked_email_domains),
            velocity=VelocityRules(
                period_days=self.fraud.velocity.period_days,
                max_conversions=self.fraud.velocity.max_conversions,
                max_order_value_minor=self.fraud.velocity.max_order_value_minor,
            ),
            review_reasons=frozenset(self.fraud.review_instead_of_reject),
            clawback_referrer=self.clawback.revoke_referrer,
            clawback_referee=self.clawback.revoke_referee,
            clawback_within_days=self.clawback.within_days,
        )


def _reward_spec(reward: PointsReward | CouponReward | PerkReward) -> RewardSpec:
    if isinstance(reward, PointsReward):
        return RewardSpec(kind="points", points=reward.points)
    if isinstance(reward, CouponReward):
        return RewardSpec(kind="coupon", amount_minor=reward.amount_minor, currency=reward.currency)
    return RewardSpec(kind="perk", perk=reward.perk)


class MissingCodeSecret(Exception):
    """The environment variable a tenant's program names for its code secret is unset or too short."""

    def __init__(self, tenant: str, variable: str, reason: str) -> None:
        super().__init__(f"tenant {tenant}: referrals.codes.secret_env ({variable}): {reason}")
        self.tenant = tenant
        self.variable = variable
        self.reason = reason


MIN_SECRET_BYTES = 16


def resolve_code_secrets(
    programs: Mapping[str, ReferralsProgram], environ: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """Read each tenant's code secret from the environment; fail before start if one is missing."""
    env = os.environ if environ is None else environ
    secrets: dict[str, bytes] = {}
    for tenant, program in programs.items():
        variable = program.codes.secret_env
        value = env.get(variable)
        if value is None:
            raise MissingCodeSecret(tenant, variable, "is not set")
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise MissingCodeSecret(tenant, variable, f"must be at least {MIN_SECRET_BYTES} bytes")
        secrets[tenant] = value.encode()
    return secrets

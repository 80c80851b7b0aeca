"""The ``tiers:`` section of a retailer program file, as a pydantic model.

Loaded with the kit's ``load_programs(dir, "tiers", TiersProgram)``, so every mistake is reported as
``file: tiers.<path>: reason``. Cross-field rules (ladder order, known tier ids, ...) name the exact
sub-path in their reason because pydantic reports a model validator's error at the model's own path.

A program has an explicit ``version``. Changing anything that affects status (thresholds, rules, window,
policy) must come with a new version; the service stores a fingerprint per version and refuses to start
when a known version's content changed silently (see ``TiersProgram.fingerprint``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")]
LocaleTag = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
Localized = Annotated[dict[LocaleTag, Annotated[str, StringConstraints(min_length=1, max_length=500)]],
                      Field(min_length=1)]

Activity = Literal["purchase", "review", "referral", "survey", "community"]
ACTIVITIES: tuple[Activity, ...] = ("purchase", "review", "referral", "survey", "community")

_DECIMAL_LIMIT = Decimal(1000)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerkSpec(_Section):
    """A privilege unlocked by a tier (not a discount): early access, reserve scarce items, ..."""

    id: Slug
    kind: Slug = Field(description="e.g. early_access, reserve_scarce_items, free_express_delivery, "
                                    "closed_digest, personal_manager")
    name: Localized
    description: Localized


class TierSpec(_Section):
    id: Slug
    name: Localized
    threshold: int = Field(ge=0, description="Status points in the window needed to hold this tier.")
    perks: list[PerkSpec] = Field(default_factory=list)


class PurchaseRule(_Section):
    points_per_currency_unit: Decimal = Field(default=Decimal(1), ge=0, le=_DECIMAL_LIMIT)
    category_multipliers: dict[Slug, Annotated[Decimal, Field(ge=0, le=_DECIMAL_LIMIT)]] = Field(
        default_factory=dict
    )
    # Delivery fees and gift cards are not spend on goods; they earn nothing by default.
    excluded_categories: list[Slug] = Field(default_factory=lambda: ["delivery_fee", "gift_card"])


class ReviewRule(_Section):
    """Rating never matters: rewarding only good reviews would buy praise."""

    points: int = Field(default=0, ge=0)
    min_text_length: int = Field(default=0, ge=0)
    require_photo: bool = False
    photo_bonus: int = Field(default=0, ge=0)


class ReferralRule(_Section):
    """Status points for a referral reward granted by the referrals service (kind = points).

    Only ReferralRewardGranted/Revoked are consumed, never ReferralConverted: each conversion produces
    exactly one referrer grant, so counting both would book the same friend twice. ``points: null`` books
    the grant's own points; an integer books that fixed amount per grant.
    """

    roles: list[Literal["referrer", "referee"]] = Field(default_factory=lambda: ["referrer"])  # type: ignore[arg-type]
    points: int | None = Field(default=None, ge=0)


class SurveyRule(_Section):
    points: int = Field(default=0, ge=0, description="Per answered survey request (once per request).")


class CommunityRule(_Section):
    points_by_kind: dict[Slug, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class Cap(_Section):
    """Most status points one activity can earn per calendar day / month (tenant time zone)."""

    per_day: int | None = Field(default=None, ge=0)
    per_month: int | None = Field(default=None, ge=0)


class EarningRules(_Section):
    purchase: PurchaseRule = Field(default_factory=PurchaseRule)
    review: ReviewRule = Field(default_factory=ReviewRule)
    referral: ReferralRule = Field(default_factory=ReferralRule)
    survey: SurveyRule = Field(default_factory=SurveyRule)
    community: CommunityRule = Field(default_factory=CommunityRule)
    caps: dict[Activity, Cap] = Field(default_factory=dict)


class QualificationWindow(_Section):
    kind: Literal["rolling_days", "calendar_year", "membership_anniversary"]
    days: int | None = Field(default=None, ge=1, le=3660)

    @model_validator(mode="after")
    def _days_only_for_rolling(self) -> QualificationWindow:
        if self.kind == "rolling_days" and self.days is None:
            raise ValueError("days is required when kind is rolling_days")
        if self.kind != "rolling_days" and self.days is not None:
            raise ValueError(f"days applies only to rolling_days, not to {self.kind}")
        return self


class DowngradePolicy(_Section):
    policy: Literal["none", "one_step", "to_supported"]
    grace_days: int = Field(default=0, ge=0, le=3660)
    notice_days: int = Field(default=0, ge=0, le=3660)
    # What a recalculation does when a new version no longer supports a customer's tier.
    recalculation: Literal["immediate", "with_grace"] = "with_grace"


class Override(_Section):
    """Manual status: ``floor`` = never below this tier, ``fixed`` = exactly this tier, until expires_at."""

    customer_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    mode: Literal["floor", "fixed"]
    tier: Slug
    reason: Annotated[str, StringConstraints(min_length=3, max_length=500)]
    starts_at: AwareDatetime
    expires_at: AwareDatetime


class TiersProgram(_Section):
    version: int = Field(ge=1, description="Bump on every change that affects status; drives recalculation.")
    timezone: str | None = Field(default=None, description="Day/month/year boundaries; default: file header.")
    ladder: list[TierSpec] = Field(min_length=1)
    earning: EarningRules = Field(default_factory=EarningRules)
    window: QualificationWindow
    downgrade: DowngradePolicy
    milestones: list[Annotated[Decimal, Field(gt=0, lt=1)]] = Field(default_factory=list)
    expiring_soon_days: int = Field(default=30, ge=1, le=3660)
    overrides: list[Override] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("milestones")
    @classmethod
    def _milestones_sorted_unique(cls, value: list[Decimal]) -> list[Decimal]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _ladder_consistent(self) -> TiersProgram:
        ids = [tier.id for tier in self.ladder]
        for i, tier_id in enumerate(ids):
            if tier_id in ids[:i]:
                raise ValueError(f"ladder[{i}].id {tier_id!r} is used twice")
        if self.ladder[0].threshold != 0:
            raise ValueError(
                f"ladder[0].threshold must be 0 (everyone starts somewhere), got {self.ladder[0].threshold}"
            )
        for i in range(1, len(self.ladder)):
            if self.ladder[i].threshold <= self.ladder[i - 1].threshold:
                raise ValueError(
                    f"ladder[{i}].threshold ({self.ladder[i].threshold}) must be greater than "
                    f"ladder[{i - 1}].threshold ({self.ladder[i - 1].threshold})"
                )
        for i, tier in enumerate(self.ladder):
            perk_ids = [perk.id for perk in tier.perks]
            for j, perk_id in enumerate(perk_ids):
                if perk_id in perk_ids[:j]:
                    raise ValueError(f"ladder[{i}].perks[{j}].id {perk_id!r} is used twice in this tier")
        for i, override in enumerate(self.overrides):
            if override.tier not in ids:
                raise ValueError(f"overrides[{i}].tier {override.tier!r} is not a ladder tier id (known: {ids})")
            if override.starts_at >= override.expires_at:
                raise ValueError(f"overrides[{i}].starts_at must be before expires_at")
        return self

    # -- helpers used by the domain -------------------------------------------------------------------

    def zone(self, default: str = "UTC") -> ZoneInfo:
        return ZoneInfo(self.timezone or default)

    def tier_index(self, tier_id: str) -> int:
        for i, tier in enumerate(self.ladder):
            if tier.id == tier_id:
                return i
        raise KeyError(tier_id)

    def fingerprint(self) -> str:
        """Content hash of everything that affects status (stable across key order in the YAML)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()


def effective_override(program: TiersProgram, customer_id: str, at: datetime) -> Override | None:
    """The override in force for a customer at ``at`` (the latest-listed one wins if several overlap)."""
    found: Override | None = None
    for override in program.overrides:
        if override.customer_id != customer_id:
            continue
        if override.starts_at <= at < override.expires_at:
            found = override
    return found


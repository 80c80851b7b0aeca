"""Results of the tiers service."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from loyalty_contracts.base import Contract, Event, Identifier


class Perk(Contract):
    """A privilege a tier unlocks."""

    perk_id: Identifier = Field(description="Perk id as named in the program file.")
    kind: Identifier = Field(description="Kind, e.g. 'early_access', 'free_express_delivery', 'personal_manager'.")
    name: str = Field(min_length=1, max_length=200, description="Display name in the customer's locale.")
    names: dict[str, str] = Field(
        default_factory=dict, description="Display name per locale (BCP 47 tag → text), from the program file."
    )
    descriptions: dict[str, str] = Field(
        default_factory=dict, description="What the perk gives, per locale (BCP 47 tag → text)."
    )


class TierChanged(Event):
    """The customer's tier went up or down."""

    event_type: ClassVar[str] = "TierChanged"
    event_version: ClassVar[int] = 1

    from_tier: Identifier | None = Field(description="Previous tier id; null for a customer's first tier.")
    to_tier: Identifier = Field(description="New tier id.")
    direction: Literal["up", "down"] = Field(description="Whether this is a promotion or a downgrade.")
    reason: Identifier = Field(description="Why, e.g. 'threshold_reached', 'points_expired', 'program_changed'.")
    effective_at: AwareDatetime = Field(description="When the new tier applies (event time).")
    perks: list[Perk] = Field(default_factory=list, description="Perks of the new tier.")
    points: int = Field(default=0, ge=0, description="Status points in the window after the change.")
    from_tier_names: dict[str, str] = Field(
        default_factory=dict, description="Living name of from_tier per locale (BCP 47 tag → text)."
    )
    to_tier_names: dict[str, str] = Field(
        default_factory=dict, description="Living name of to_tier per locale (BCP 47 tag → text)."
    )
    program_version: int | None = Field(
        default=None, ge=1, description="Version of the tenant's tier program the change was computed under."
    )


class TierProgressMilestone(Event):
    """The customer passed a progress milestone towards the next tier (e.g. 50 %, 80 %)."""

    event_type: ClassVar[str] = "TierProgressMilestone"
    event_version: ClassVar[int] = 1

    tier: Identifier = Field(description="Current tier id.")
    next_tier: Identifier = Field(description="Tier being approached.")
    fraction: float = Field(ge=0, le=1, description="Progress towards next_tier, 0 to 1 (a ratio, not money).")
    points: int = Field(ge=0, description="Status points in the window.")
    points_needed: int = Field(ge=0, description="Points still needed to reach next_tier.")
    next_tier_names: dict[str, str] = Field(
        default_factory=dict, description="Living name of next_tier per locale (BCP 47 tag → text)."
    )


class TierDowngradeScheduled(Event):
    """Unless the customer earns enough points, they move down at effective_at (sent in advance)."""

    event_type: ClassVar[str] = "TierDowngradeScheduled"
    event_version: ClassVar[int] = 1

    from_tier: Identifier = Field(description="Current tier id.")
    to_tier: Identifier = Field(description="Tier the customer would move to.")
    effective_at: AwareDatetime = Field(description="When the downgrade takes effect.")
    points_needed: int = Field(default=0, ge=0, description="Points that would keep the current tier.")
    from_tier_names: dict[str, str] = Field(
        default_factory=dict, description="Living name of from_tier per locale (BCP 47 tag → text)."
    )
    to_tier_names: dict[str, str] = Field(
        default_factory=dict, description="Living name of to_tier per locale (BCP 47 tag → text)."
    )

"""Small builders for tiers tests: a compact program and facts with readable defaults."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from loyalty_tiers.domain import (
    Community,
    Purchase,
    PurchaseLine,
    ReferralGrant,
    ReferralRevoke,
    Refund,
    Review,
    SurveyAnswer,
)
from loyalty_tiers.program import TiersProgram

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

BASE_PROGRAM: dict[str, Any] = {
    "version": 1,
    "timezone": "UTC",
    "ladder": [
        {"id": "novice", "name": {"en": "Novice", "ru": "Новичок"}, "threshold": 0},
        {
            "id": "maker", "name": {"en": "Maker", "ru": "Мастер"}, "threshold": 100,
            "perks": [{"id": "early", "kind": "early_access", "name": {"en": "Early access", "ru": "Ранний доступ"},
                       "description": {"en": "48 h early", "ru": "на 48 ч раньше"}}],
        },
        {"id": "expert", "name": {"en": "Expert", "ru": "Эксперт"}, "threshold": 300},
        {"id": "guru", "name": {"en": "Guru", "ru": "Гуру"}, "threshold": 800},
    ],
    "earning": {
        "purchase": {"points_per_currency_unit": 1, "category_multipliers": {"power_tools": 1.5}},
        "review": {"points": 40, "min_text_length": 100, "photo_bonus": 10},
        "referral": {"roles": ["referrer"], "points": 60},
        "survey": {"points": 5},
        "community": {"points_by_kind": {"forum_answer": 3, "workshop_attended": 20}},
    },
    "window": {"kind": "rolling_days", "days": 365},
    "downgrade": {"policy": "one_step", "grace_days": 30, "notice_days": 10},
    "milestones": [0.5, 0.8],
}


def program(**changes: Any) -> TiersProgram:
    """BASE_PROGRAM with top-level keys replaced; nested dicts given as ``earning={...}`` replace wholesale."""
    data = copy.deepcopy(BASE_PROGRAM)
    data.update(changes)
    return TiersProgram.model_validate(data)


def at(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def purchase(
    event_id: str, when: datetime, order_id: str | None = None, *lines: tuple[str, str, int, int], currency: str = "EUR"
) -> Purchase:
    """``lines`` as (line_id, category, quantity, unit_price_minor); default one 'tools' line of 10 x 10.00."""
    built = tuple(PurchaseLine(*line) for line in lines) or (PurchaseLine("l1", "tools", 10, 1000),)
    return Purchase(event_id, when, order_id or f"o-{event_id}", currency, built)


def refund(
    event_id: str, when: datetime, order_id: str, *lines: tuple[str, int], full: bool = False
) -> Refund:
    return Refund(event_id, when, order_id, f"r-{event_id}", full, tuple(lines))


def review(event_id: str, when: datetime, sku: str = "drill", text_length: int = 300, photo: bool = False) -> Review:
    return Review(event_id, when, f"rv-{event_id}", sku, text_length, photo)


def grant(event_id: str, when: datetime, reward_id: str, role: str = "referrer", points: int = 999) -> ReferralGrant:
    return ReferralGrant(event_id, when, reward_id, role, points)


def revoke(event_id: str, when: datetime, reward_id: str, role: str = "referrer") -> ReferralRevoke:
    return ReferralRevoke(event_id, when, reward_id, role)


def survey(event_id: str, when: datetime, request_id: str | None = None) -> SurveyAnswer:
    return SurveyAnswer(event_id, when, request_id or f"rq-{event_id}")


def community(event_id: str, when: datetime, kind: str = "workshop_attended") -> Community:
    return Community(event_id, when, f"a-{event_id}", kind)

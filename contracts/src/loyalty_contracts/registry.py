"""Every event model by its CloudEvents type ``loyalty.<EventType>.v<N>``.

A new major version is a new model class (e.g. ``PurchaseMadeV2`` with ``event_version = 2``) registered
next to v1; both stay in ``EVENT_TYPES`` while either is published.
"""

from __future__ import annotations

from loyalty_contracts.base import Event
from loyalty_contracts.events import notifier, referrals, retail, surveys, tiers

ALL_EVENT_MODELS: tuple[type[Event], ...] = (
    retail.CustomerRegistered,
    retail.ConsentChanged,
    retail.PurchaseMade,
    retail.PurchaseRefunded,
    retail.DeliveryCompleted,
    retail.ReviewLeft,
    retail.FriendInvited,
    retail.CommunityActivity,
    retail.SurveyAnswered,
    retail.CaseResolved,
    retail.ImprovementShipped,
    retail.ConsultationCompleted,
    tiers.TierChanged,
    tiers.TierProgressMilestone,
    tiers.TierDowngradeScheduled,
    referrals.ReferralCodeIssued,
    referrals.ReferralConverted,
    referrals.ReferralRewardGranted,
    referrals.ReferralRewardRevoked,
    referrals.ReferralRejected,
    surveys.SurveyRequested,
    surveys.FeedbackReceived,
    surveys.FollowUpRequested,
    surveys.DetractorCaseOpened,
    surveys.CaseDeadlineBreached,
    surveys.LoopClosed,
    surveys.YouSaidWeDid,
    surveys.CustomerAtRisk,
    notifier.NotificationDelivered,
    notifier.NotificationFailed,
    notifier.NotificationSuppressed,
)

EVENT_TYPES: dict[str, type[Event]] = {model.ce_type(): model for model in ALL_EVENT_MODELS}
# Event names with at least one registered version, to tell "unknown type" from "unknown version".
EVENT_NAMES: frozenset[str] = frozenset(model.event_type for model in ALL_EVENT_MODELS)

if len(EVENT_TYPES) != len(ALL_EVENT_MODELS):  # pragma: no cover - guards against copy-paste mistakes
    raise RuntimeError("two event models share one ce_type")


def model_for(ce_type: str) -> type[Event]:
    """The model class for a ce_type; ``KeyError`` naming the type when it is not registered."""
    try:
        return EVENT_TYPES[ce_type]
    except KeyError:
        raise KeyError(f"unknown event type {ce_type!r}") from None

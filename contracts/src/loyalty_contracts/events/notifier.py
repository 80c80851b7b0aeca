"""Results of the notifier service: one event per delivery outcome."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from loyalty_contracts.base import Event, Identifier, KeyedHash

DeliveryChannel = Literal["email", "sms", "telegram", "webhook"]


class NotificationDelivered(Event):
    """A message reached the channel provider (or the partner webhook)."""

    event_type: ClassVar[str] = "NotificationDelivered"
    event_version: ClassVar[int] = 1

    notification_id: Identifier = Field(description="Notification id, unique per tenant.")
    source_event_id: Identifier = Field(description="ce_id of the event that caused the message.")
    source_event_type: str = Field(description="ce_type of the event that caused the message.")
    channel: DeliveryChannel = Field(description="Channel used.")
    template: Identifier = Field(description="Template key used.")
    recipient_hash: KeyedHash = Field(description="Keyed hash of the recipient address (no raw contact).")
    attempts: int = Field(default=1, ge=1, description="Attempts it took.")


class NotificationFailed(Event):
    """A message could not be delivered on any allowed channel (or was given up)."""

    event_type: ClassVar[str] = "NotificationFailed"
    event_version: ClassVar[int] = 1

    notification_id: Identifier = Field(description="Notification id, unique per tenant.")
    source_event_id: Identifier = Field(description="ce_id of the event that caused the message.")
    source_event_type: str = Field(description="ce_type of the event that caused the message.")
    channel: DeliveryChannel | None = Field(default=None, description="Last channel tried, if any.")
    template: Identifier | None = Field(default=None, description="Template key, if one was chosen.")
    reason: Literal[
        "no_consent",
        "no_contact",
        "provider_error",
        "retries_exhausted",
        "endpoint_disabled",
        "invalid_template",
    ] = Field(description="Reason code.")
    detail: str | None = Field(default=None, max_length=500, description="Error detail without PII.")
    attempts: int = Field(default=0, ge=0, description="Attempts made.")


class NotificationSuppressed(Event):
    """A message was decided against on purpose (consent, contact budget, frequency cap, no contact).

    Surveys reads it for SurveyRequested to record a survey request suppressed by the shared contact budget
    (docs/CONTACT_BUDGET.md). Nothing was sent; the reason says why.
    """

    event_type: ClassVar[str] = "NotificationSuppressed"
    event_version: ClassVar[int] = 1

    source_event_id: Identifier = Field(description="ce_id of the event that would have caused the message.")
    source_event_type: str = Field(description="ce_type of that event (or 'journey:<name>:<step>').")
    template: Identifier | None = Field(default=None, description="Template key that would have been used.")
    category: Literal["transactional", "service", "marketing", "survey"] = Field(
        description="Consent category of the message."
    )
    channel: DeliveryChannel | None = Field(default=None, description="Channel it would have used, if chosen.")
    reason: Literal[
        "unknown_customer", "no_consent", "no_reachable_channel", "contact_budget", "frequency_cap", "journey_exited"
    ] = Field(description="Reason code.")
    detail: str | None = Field(default=None, max_length=500, description="Detail without PII.")

"""Base types shared by every event model.

Every event is a strict, frozen pydantic v2 model. Strict mode means python-side construction takes real
types (``datetime``, ``int``), so a float never sneaks into money and a naive datetime never sneaks into
event time. On the wire, strict JSON validation (``model_validate_json``) still accepts RFC 3339 strings.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# Identifiers are opaque strings chosen by the retailer (or by us for ids we mint).
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# ISO 4217 alphabetic code, e.g. "EUR".
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# BCP 47 language tag such as "en" or "ru-RU".
Locale = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
# A keyed hash (e.g. HMAC-SHA256 hex) computed by the retailer; raw contacts never travel as identities.
KeyedHash = Annotated[str, StringConstraints(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_\-:=+/]+$")]

# Subject used by events that concern a whole tenant rather than one customer (ImprovementShipped):
# it keeps the "Kafka key = customer_id" rule uniform; all such events share one partition, which is fine
# for their low volume.
TENANT_SUBJECT = "_tenant"


class Contract(BaseModel):
    """Base of every model that travels on the wire (events and their nested parts)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Money(Contract):
    """An amount in integer minor units (cents, kopecks) with its currency. Never a float."""

    amount_minor: int = Field(description="Amount in minor units of the currency (e.g. 1999 = 19.99 EUR).")
    currency: CurrencyCode = Field(description="ISO 4217 alphabetic currency code, three upper-case letters.")


class Event(Contract):
    """Base of every event. Subclasses set ``event_type`` and ``event_version``.

    ``customer_id`` is the CloudEvents subject and the Kafka key, so one customer's events stay in order.
    ``occurred_at`` is event time: every rule uses it, never the wall clock.
    """

    event_type: ClassVar[str]
    event_version: ClassVar[int]

    customer_id: Identifier = Field(
        description="The customer this event is about; also the Kafka key and the CloudEvents subject."
    )
    occurred_at: AwareDatetime = Field(description="When the fact happened (event time), RFC 3339 with a UTC offset.")

    @classmethod
    def ce_type(cls) -> str:
        """CloudEvents type carrying name and major version, e.g. ``loyalty.PurchaseMade.v1``."""
        return f"loyalty.{cls.event_type}.v{cls.event_version}"

"""Input events: facts retailers publish (producer ``retailer``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from loyalty_contracts.base import Contract, Event, Identifier, KeyedHash, Locale, Money

Channel = Literal["email", "sms", "telegram", "webhook"]
ConsentCategory = Literal["transactional", "service", "marketing", "survey"]
SalesChannel = Literal["store", "web", "app", "phone", "marketplace"]

# Line categories with special meaning for earning rules (tiers exclude them from status points).
DELIVERY_FEE_CATEGORY = "delivery_fee"
GIFT_CARD_CATEGORY = "gift_card"


class Contacts(Contract):
    """How to reach the customer on each channel; every channel is optional."""

    email: str | None = Field(default=None, max_length=320, description="E-mail address.")
    phone: str | None = Field(
        default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="Phone number in E.164 form for SMS."
    )
    telegram_chat_id: str | None = Field(
        default=None, max_length=64, description="Telegram chat id the retailer's bot can write to."
    )


class Consents(Contract):
    """Consent per message category. Transactional messages (receipts, case replies) default to allowed."""

    transactional: bool = Field(default=True, description="Messages the customer needs about their orders.")
    service: bool = Field(default=True, description="Service messages: onboarding tips, tier status.")
    marketing: bool = Field(default=False, description="Promotional messages.")
    survey: bool = Field(default=False, description="Survey invitations and follow-up questions.")


class ContactHashes(Contract):
    """Keyed hashes of the customer's contacts (same key as FriendInvited.invitee_contact_hash)."""

    email: KeyedHash | None = Field(default=None, description="Keyed hash of the normalised e-mail address.")
    phone: KeyedHash | None = Field(default=None, description="Keyed hash of the E.164 phone number.")


class CustomerRegistered(Event):
    """A customer signed up with the retailer."""

    event_type: ClassVar[str] = "CustomerRegistered"
    event_version: ClassVar[int] = 1

    name: str = Field(min_length=1, max_length=200, description="Name to address the customer by.")
    locale: Locale = Field(description="Preferred language, BCP 47 (e.g. 'en', 'ru').")
    time_zone: str = Field(
        min_length=1, max_length=64, description="IANA time zone name, e.g. 'Europe/Berlin' (quiet hours)."
    )
    contacts: Contacts = Field(description="Contact per channel.")
    consents: Consents = Field(description="Consent per message category.")
    referral_code: str | None = Field(
        default=None, max_length=64, description="Referral code entered at registration, if any."
    )
    contact_hashes: ContactHashes | None = Field(
        default=None, description="Keyed hashes of contacts, used to match pending invitations."
    )
    email_domain: str | None = Field(
        default=None, max_length=253, description="Domain part of the e-mail (fraud: blocked domains)."
    )


class ConsentChanged(Event):
    """The customer changed consent for one category (and optionally one channel)."""

    event_type: ClassVar[str] = "ConsentChanged"
    event_version: ClassVar[int] = 1

    category: ConsentCategory = Field(description="Message category whose consent changed.")
    granted: bool = Field(description="True when consent is now given, false when withdrawn.")
    channel: Channel | None = Field(
        default=None, description="Channel the change applies to; absent means every channel."
    )


class PurchaseLine(Contract):
    """One line of an order."""

    line_id: Identifier = Field(description="Line id, unique within the order; refunds refer to it.")
    sku: Identifier = Field(description="Product SKU.")
    category: Identifier = Field(
        description="Product category. 'delivery_fee' and 'gift_card' mark lines that earn no status points."
    )
    quantity: int = Field(ge=1, description="Units bought.")
    unit_price: Money = Field(description="Price of one unit, after discounts.")


class PurchaseMade(Event):
    """An order was paid. All lines are in the order currency; line ids are unique within the order."""

    event_type: ClassVar[str] = "PurchaseMade"
    event_version: ClassVar[int] = 1

    order_id: Identifier = Field(description="Order id, unique per tenant.")
    store_id: Identifier = Field(description="Store (or web shop) that sold it.")
    sales_channel: SalesChannel = Field(description="Where the sale happened.")
    lines: list[PurchaseLine] = Field(min_length=1, description="Order lines.")
    total: Money = Field(description="Amount paid for the whole order; its currency is the order currency.")
    referral_code: str | None = Field(
        default=None, max_length=64, description="Referral code entered at checkout, if any."
    )
    payment_fingerprint_hash: KeyedHash | None = Field(
        default=None, description="Keyed hash of the payment instrument (fraud checks)."
    )
    shipping_address_hash: KeyedHash | None = Field(
        default=None, description="Keyed hash of the normalised shipping address (fraud checks)."
    )

    @model_validator(mode="after")
    def _one_currency_unique_lines(self) -> PurchaseMade:
        # A plain loop: this runs for every consumed purchase (a generator and a set comprehension cost ~2x).
        currency = self.total.currency
        seen: set[str] = set()
        for line in self.lines:
            if line.unit_price.currency != currency:
                raise ValueError("every line's unit_price must be in the order currency (total.currency)")
            seen.add(line.line_id)
        if len(seen) != len(self.lines):
            raise ValueError("line_id must be unique within the order")
        return self


class RefundedLine(Contract):
    """Units of one order line given back."""

    line_id: Identifier = Field(description="PurchaseLine.line_id of the refunded line.")
    quantity: int = Field(ge=1, description="Units refunded.")


class PurchaseRefunded(Event):
    """Money was returned for all or part of an order. A partial refund lists its lines."""

    event_type: ClassVar[str] = "PurchaseRefunded"
    event_version: ClassVar[int] = 1

    order_id: Identifier = Field(description="Order the refund belongs to.")
    refund_id: Identifier = Field(description="Refund id, unique per tenant (one order can have several).")
    full: bool = Field(description="True when the whole order is refunded; then 'lines' may be empty.")
    lines: list[RefundedLine] = Field(default_factory=list, description="Refunded lines for a partial refund.")
    amount: Money = Field(description="Amount returned to the customer.")

    @model_validator(mode="after")
    def _partial_refund_names_lines(self) -> PurchaseRefunded:
        if not self.full and not self.lines:
            raise ValueError("a partial refund (full=false) must list the refunded lines")
        return self


class DeliveryCompleted(Event):
    """An order reached the customer."""

    event_type: ClassVar[str] = "DeliveryCompleted"
    event_version: ClassVar[int] = 1

    order_id: Identifier = Field(description="Delivered order.")


class ReviewLeft(Event):
    """The customer reviewed a product."""

    event_type: ClassVar[str] = "ReviewLeft"
    event_version: ClassVar[int] = 1

    review_id: Identifier = Field(description="Review id, unique per tenant.")
    sku: Identifier = Field(description="Reviewed product SKU.")
    category: Identifier = Field(description="Category of the reviewed product.")
    rating: int = Field(ge=1, le=5, description="Star rating, 1 to 5.")
    text_length: int = Field(ge=0, description="Length of the review text in characters (the text stays out).")
    has_photo: bool = Field(description="True when the review has at least one photo.")


class FriendInvited(Event):
    """The customer (the referrer) invited a friend."""

    event_type: ClassVar[str] = "FriendInvited"
    event_version: ClassVar[int] = 1

    invitation_id: Identifier = Field(description="Invitation id, unique per tenant.")
    invitee_contact_hash: KeyedHash = Field(
        description=("Keyed hash of the invitee's e-mail or phone, same key as CustomerRegistered.contact_hashes.")
    )
    channel: Literal["email", "sms", "telegram", "link", "other"] = Field(description="How the invitation was sent.")
    invitee_email_domain: str | None = Field(
        default=None, max_length=253, description="Domain of the invitee's e-mail (fraud: blocked domains)."
    )


class CommunityActivity(Event):
    """The customer did something in the retailer's community."""

    event_type: ClassVar[str] = "CommunityActivity"
    event_version: ClassVar[int] = 1

    activity_id: Identifier = Field(description="Activity id, unique per tenant.")
    kind: Identifier = Field(
        description="Kind of activity as named in the program file, e.g. 'forum_answer', 'workshop_attended'."
    )


class SurveyAnswered(Event):
    """The customer answered a survey (through the retailer's own channel)."""

    event_type: ClassVar[str] = "SurveyAnswered"
    event_version: ClassVar[int] = 1

    survey_id: Identifier = Field(description="Survey as named in the program file.")
    request_id: Identifier = Field(description="SurveyRequested.request_id this answers.")
    score: int = Field(ge=0, le=10, description="Score: 0-10 for NPS, 1-5 for CSAT and one-question surveys.")
    comment: str | None = Field(default=None, max_length=5000, description="Free-text comment, if any.")
    answer_channel: Literal["email", "sms", "telegram", "web", "app", "other"] = Field(
        description="Channel the answer came through."
    )


class CaseResolved(Event):
    """Staff resolved a detractor case."""

    event_type: ClassVar[str] = "CaseResolved"
    event_version: ClassVar[int] = 1

    case_id: Identifier = Field(description="DetractorCaseOpened.case_id.")
    reply: str = Field(min_length=1, max_length=5000, description="Personal reply to send to the customer.")
    resolved_by: Identifier = Field(description="Staff member (id or name) who resolved it.")


class ImprovementShipped(Event):
    """The retailer shipped a change in response to feedback ("you said, we did").

    It concerns the whole tenant, so ``customer_id`` is the tenant-level subject ``"_tenant"``
    (``loyalty_contracts.base.TENANT_SUBJECT``).
    """

    event_type: ClassVar[str] = "ImprovementShipped"
    event_version: ClassVar[int] = 1

    improvement_id: Identifier = Field(description="Improvement id, unique per tenant.")
    theme: Identifier = Field(description="Feedback theme it answers, as named in the program file.")
    messages: dict[str, str] = Field(
        min_length=1,
        description="Message to customers per locale, e.g. {'en': 'Delivery is now 2 days faster'}.",
    )
    since: AwareDatetime | None = Field(
        default=None, description="Only customers who raised the theme after this time are told."
    )


class ConsultationCompleted(Event):
    """A consultation (in store, by phone, by chat) ended; triggers a one-question survey."""

    event_type: ClassVar[str] = "ConsultationCompleted"
    event_version: ClassVar[int] = 1

    consultation_id: Identifier = Field(description="Consultation id, unique per tenant.")
    store_id: Identifier | None = Field(default=None, description="Store where it happened, if any.")
    topic: str | None = Field(default=None, max_length=200, description="What it was about.")

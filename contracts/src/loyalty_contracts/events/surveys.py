"""Results of the surveys service."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from loyalty_contracts.base import Event, Identifier
from loyalty_contracts.events.retail import SalesChannel

SurveyKind = Literal["nps", "csat", "question"]
SurveyTrigger = Literal["purchase", "delivery", "consultation", "follow_up", "manual"]


class SurveyRequested(Event):
    """Ask the customer a survey; the notifier sends the link."""

    event_type: ClassVar[str] = "SurveyRequested"
    event_version: ClassVar[int] = 1

    request_id: Identifier = Field(description="Request id, unique per tenant.")
    survey_id: Identifier = Field(description="Survey as named in the program file.")
    kind: SurveyKind = Field(description="NPS (0-10), CSAT (1-5) or one question (1-5).")
    answer_token: str = Field(
        min_length=16, max_length=1000, description="Signed, expiring, single-use token for the answer link."
    )
    answer_url: str = Field(min_length=1, max_length=2000, description="Link the customer opens to answer.")
    expires_at: AwareDatetime = Field(description="When the token stops being accepted.")
    trigger: SurveyTrigger = Field(description="What caused the request.")
    question: str | None = Field(default=None, max_length=500, description="Question text for kind 'question'.")


class FeedbackReceived(Event):
    """An answer, normalised with its segment (store, channel, category) for analytics and referrals."""

    event_type: ClassVar[str] = "FeedbackReceived"
    event_version: ClassVar[int] = 1

    feedback_id: Identifier = Field(description="Feedback id, unique per tenant.")
    request_id: Identifier | None = Field(default=None, description="SurveyRequested.request_id, if any.")
    survey_kind: SurveyKind = Field(description="Kind of survey answered.")
    score: int = Field(ge=0, le=10, description="Score on the survey kind's scale.")
    comment: str | None = Field(default=None, max_length=5000, description="Free-text comment, if any.")
    themes: list[Identifier] = Field(default_factory=list, description="Themes detected in the comment.")
    store_id: Identifier | None = Field(default=None, description="Store of the experience, if known.")
    sales_channel: SalesChannel | None = Field(default=None, description="Sales channel, if known.")
    category: Identifier | None = Field(default=None, description="Product category, if known.")


class FollowUpRequested(Event):
    """Ask a follow-up question, e.g. "what kept you from 5?" after 4 stars without a comment."""

    event_type: ClassVar[str] = "FollowUpRequested"
    event_version: ClassVar[int] = 1

    feedback_id: Identifier = Field(description="Feedback being followed up.")
    request_id: Identifier = Field(description="New request id for the follow-up answer.")
    question_key: Identifier = Field(description="Template key of the follow-up question.")
    answer_token: str = Field(min_length=16, max_length=1000, description="Signed single-use answer token.")
    answer_url: str = Field(min_length=1, max_length=2000, description="Link the customer opens to answer.")
    expires_at: AwareDatetime = Field(description="When the token stops being accepted.")


class DetractorCaseOpened(Event):
    """A detractor answer opened a case that staff must answer before deadline_at."""

    event_type: ClassVar[str] = "DetractorCaseOpened"
    event_version: ClassVar[int] = 1

    case_id: Identifier = Field(description="Case id, unique per tenant.")
    feedback_id: Identifier = Field(description="Feedback that opened it.")
    score: int = Field(ge=0, le=10, description="The detractor score.")
    deadline_at: AwareDatetime = Field(description="Response deadline (business hours counted).")
    queue: Identifier | None = Field(
        default=None, description="Assignment queue chosen by the program's theme rules (e.g. 'logistics')."
    )


class CaseDeadlineBreached(Event):
    """A case was not answered in time; escalate to staff."""

    event_type: ClassVar[str] = "CaseDeadlineBreached"
    event_version: ClassVar[int] = 1

    case_id: Identifier = Field(description="The late case.")
    deadline_at: AwareDatetime = Field(description="The deadline that passed.")
    queue: Identifier | None = Field(default=None, description="Assignment queue of the late case.")


class LoopClosed(Event):
    """A case was resolved; the personal reply goes to the customer."""

    event_type: ClassVar[str] = "LoopClosed"
    event_version: ClassVar[int] = 1

    case_id: Identifier = Field(description="Resolved case.")
    reply: str = Field(min_length=1, max_length=5000, description="Personal reply from staff.")
    resolved_by: Identifier = Field(description="Staff member who resolved it.")
    seconds_to_resolve: int = Field(ge=0, description="Time from case opening to resolution, in seconds.")


class YouSaidWeDid(Event):
    """Tell a customer who raised a theme that the retailer changed something."""

    event_type: ClassVar[str] = "YouSaidWeDid"
    event_version: ClassVar[int] = 1

    improvement_id: Identifier = Field(description="ImprovementShipped.improvement_id.")
    theme: Identifier = Field(description="Theme the customer raised.")
    message: str = Field(min_length=1, max_length=2000, description="Message in the customer's locale.")


class CustomerAtRisk(Event):
    """The customer's loyalty account balance turned negative."""

    event_type: ClassVar[str] = "CustomerAtRisk"
    event_version: ClassVar[int] = 1

    balance: int = Field(description="Loyalty account balance after the last entry (negative).")
    last_entry_kind: Identifier | None = Field(default=None, description="Kind of the entry that tipped it.")

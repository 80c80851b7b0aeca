"""The `surveys:` section of a retailer program file, as a validated pydantic model.

Every rule the surveys service applies is configured here: survey definitions and their triggers,
sampling and recontact periods, the answer token, follow-ups, case deadlines in business hours,
theme rules and loyalty-account weights. Validation errors carry the path inside the section
(the kit's `load_programs` adds the file name and the `surveys.` prefix).
"""

from __future__ import annotations

import itertools
import re
from datetime import date, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from loyalty_kit.programs import TimeZoneName
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from loyalty_surveys.business_hours import BusinessCalendar, OpenInterval

_DURATION_PART = re.compile(r"(\d+)\s*(d|h|m|s)")
_DURATION_WHOLE = re.compile(r"^\s*(?:\d+\s*[dhms]\s*)+$")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: object) -> timedelta:
    """'2d', '48h', '1d12h', '90m' → timedelta. Integers are seconds. Retailers write these by hand."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '2d', '48h' or '90m', not a boolean")
    if isinstance(value, int):
        return timedelta(seconds=value)
    if not isinstance(value, str) or not _DURATION_WHOLE.match(value):
        raise ValueError(f"a duration is a string like '2d', '48h', '1d12h' or '90m'; got {value!r}")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

SurveyKind = Literal["nps", "csat", "question"]
TriggerEvent = Literal["PurchaseMade", "DeliveryCompleted", "ConsultationCompleted"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Facts that move a customer's loyalty account; each needs a weight in the program.
AccountFact = Literal[
    "survey_answered",
    "promoter_score",
    "passive_score",
    "detractor_score",
    "csat_satisfied",
    "csat_neutral",
    "csat_dissatisfied",
    "case_resolved",
    "case_resolved_late",
    "deadline_breached",
    "improvement_shipped",
    "delivery_completed",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Trigger(_Strict):
    event: TriggerEvent = Field(description="Event type that triggers the survey.")
    delay: Duration = Field(description="Delay after the event's time before the survey is sent, e.g. '2d'.")
    first_purchase_only: bool = Field(
        default=False, description="PurchaseMade only: trigger on the customer's first purchase only."
    )

    @model_validator(mode="after")
    def _first_purchase_only_needs_purchase(self) -> Trigger:
        if self.first_purchase_only and self.event != "PurchaseMade":
            raise ValueError("first_purchase_only applies to PurchaseMade triggers only")
        if self.delay < timedelta(0):
            raise ValueError("delay must not be negative")
        return self


class SurveyDefinition(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Stable survey id (kebab/snake case).")
    kind: SurveyKind = Field(description="nps (0–10), csat (1–5) or question (one open question, no score).")
    question: dict[str, str] = Field(description="Question text per locale.")
    trigger: Trigger
    sampling_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of triggers that are sent.")

    @field_validator("question")
    @classmethod
    def _question_not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("give the question in at least one locale")
        for locale, text in value.items():
            if not text.strip():
                raise ValueError(f"question text for locale {locale!r} is empty")
        return value


def _parse_interval(value: object) -> OpenInterval:
    if not isinstance(value, str):
        raise ValueError(f"opening hours are written 'HH:MM-HH:MM'; got {value!r}")
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", value)
    if not match:
        raise ValueError(f"opening hours are written 'HH:MM-HH:MM'; got {value!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"not a time of day in {value!r}")
    start = time(h1, m1)
    end = time(23, 59, 59, 999999) if h2 == 24 else time(h2, m2)
    if end <= start:
        raise ValueError(f"opening hours {value!r} end before they start (overnight shifts: split them)")
    return OpenInterval(start=start, end=end)


OpeningHours = Annotated[OpenInterval, BeforeValidator(_parse_interval)]


class BusinessHours(_Strict):
    timezone: TimeZoneName = Field(description="IANA time zone the opening hours and holidays are written in.")
    weekly: dict[Weekday, list[OpeningHours]] = Field(
        description="Opening hours per weekday ('HH:MM-HH:MM'); days left out are closed."
    )
    holidays: list[date] = Field(default_factory=list, description="Closed dates (local calendar dates).")

    @field_validator("weekly")
    @classmethod
    def _sorted_disjoint(cls, value: dict[Weekday, list[OpenInterval]]) -> dict[Weekday, list[OpenInterval]]:
        if not any(value.values()):
            raise ValueError("at least one weekday needs opening hours, or no deadline could ever be reached")
        for day, intervals in value.items():
            ordered = sorted(intervals, key=lambda i: i.start)
            for before, after in itertools.pairwise(ordered):
                if after.start < before.end:
                    raise ValueError(f"opening hours on {day} overlap")
            value[day] = ordered
        return value

    def calendar(self) -> BusinessCalendar:
        return BusinessCalendar(
            zone=ZoneInfo(self.timezone),
            weekly=tuple(tuple(self.weekly.get(day, [])) for day in WEEKDAYS),
            holidays=frozenset(self.holidays),
        )


class AnswerToken(_Strict):
    secret_env: str = Field(
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the environment variable holding the HMAC secret (never the secret itself).",
    )
    ttl: Duration = Field(default=timedelta(days=14), description="How long an answer link stays valid.")
    answer_url: str = Field(description="Link template the notifier sends; '{token}' is replaced by the signed token.")

    @field_validator("answer_url")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{token}" not in value:
            raise ValueError("answer_url must contain '{token}'")
        return value


class FollowUp(_Strict):
    delay: Duration = Field(default=timedelta(days=1), description="Delay after the answer.")
    nps_scores: list[int] = Field(default=[7, 8], description="NPS scores asking 'what kept you from 10?'.")
    csat_scores: list[int] = Field(default=[4], description="CSAT scores asking 'what kept you from 5?'.")

    @model_validator(mode="after")
    def _in_range(self) -> FollowUp:
        if any(not 0 <= s <= 9 for s in self.nps_scores):
            raise ValueError("nps_scores must be within 0–9 (a 10 has nothing to improve)")
        if any(not 1 <= s <= 4 for s in self.csat_scores):
            raise ValueError("csat_scores must be within 1–4 (a 5 has nothing to improve)")
        return self


class CaseQueue(_Strict):
    name: str = Field(min_length=1)
    themes: list[str] = Field(default_factory=list, description="Cases whose feedback has one of these themes.")


class Cases(_Strict):
    response_deadline: Duration = Field(description="Response deadline counted in business hours, e.g. '8h'.")
    default_queue: str = Field(default="general", min_length=1)
    queues: list[CaseQueue] = Field(default_factory=list, description="First queue with a matching theme wins.")

    @field_validator("response_deadline")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("response_deadline must be positive")
        return value


class ThemeRule(_Strict):
    theme: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    keywords: list[str] = Field(default_factory=list, description="Case-insensitive substrings (any locale).")
    patterns: list[str] = Field(default_factory=list, description="Case-insensitive regular expressions.")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> ThemeRule:
        if not self.keywords and not self.patterns:
            raise ValueError("a theme rule needs keywords or patterns")
        return self


class LoyaltyAccount(_Strict):
    opening_balance: int = Field(default=0, description="Balance of a customer the service has not seen yet.")
    weights: dict[AccountFact, int] = Field(description="Deposit (>0) or withdrawal (<0) per fact.")


class YouSaidWeDid(_Strict):
    window: Duration = Field(
        default=timedelta(days=180), description="Feedback this long before the improvement counts."
    )


class SurveysProgram(_Strict):
    surveys: list[SurveyDefinition] = Field(description="Survey definitions with their triggers.")
    recontact_period: Duration = Field(
        default=timedelta(days=30), description="No survey to a customer within this period of the last one."
    )
    answer_token: AnswerToken
    follow_up: FollowUp = Field(default_factory=FollowUp)
    business_hours: BusinessHours
    cases: Cases
    themes: list[ThemeRule] = Field(default_factory=list)
    loyalty_account: LoyaltyAccount
    you_said_we_did: YouSaidWeDid = Field(default_factory=YouSaidWeDid)

    @model_validator(mode="after")
    def _unique_ids(self) -> SurveysProgram:
        ids = [s.id for s in self.surveys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"survey ids must be unique; repeated: {', '.join(duplicates)}")
        themes = {t.theme for t in self.themes}
        for queue in self.cases.queues:
            unknown = sorted(set(queue.themes) - themes)
            if unknown:
                raise ValueError(f"case queue {queue.name!r} names unknown themes: {', '.join(unknown)}")
        return self

    def survey(self, survey_id: str) -> SurveyDefinition | None:
        return next((s for s in self.surveys if s.id == survey_id), None)

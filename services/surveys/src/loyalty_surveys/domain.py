"""Every business decision of the surveys service, as pure functions over plain data (no I/O).

Listen (which survey to request, when, to whom), hear (follow-ups on high-but-not-perfect scores),
act (detractor cases with business-hours deadlines, closing the loop, "you said, we did"), and the
loyalty account (deposits and withdrawals; a balance turning negative flags the customer).
Identifiers derived here are deterministic (uuid5 of their cause) so a replayed log yields the same ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from loyalty_surveys.business_hours import BusinessCalendar, add_business_time, business_time_between
from loyalty_surveys.program import AccountFact, SurveyKind, SurveysProgram, ThemeRule

# Namespace for ids derived from their cause (request, feedback, case ids).
SURVEYS_NAMESPACE = uuid.UUID("6f1c2a9e-3b0d-4c1e-9a57-2f0d8c4b7e11")

NPS_MIN, NPS_MAX = 0, 10
CSAT_MIN, CSAT_MAX = 1, 5

Sentiment = Literal["promoter", "passive", "detractor"]


def derived_id(*parts: str) -> str:
    return str(uuid.uuid5(SURVEYS_NAMESPACE, "\x1f".join(parts)))


# --------------------------------------------------------------------------------------------
# Scores and NPS / CSAT arithmetic
# --------------------------------------------------------------------------------------------


def sentiment_of(kind: SurveyKind, score: int | None) -> Sentiment | None:
    """NPS 9–10 promoter, 7–8 passive, 0–6 detractor; CSAT and one-question (1–5): 4–5, 3, 1–2."""
    if score is None:
        return None
    if kind == "nps":
        return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
    return "promoter" if score >= 4 else "passive" if score == 3 else "detractor"


@dataclass(frozen=True, slots=True)
class NpsSummary:
    responses: int
    promoters: int
    passives: int
    detractors: int

    @property
    def nps(self) -> float | None:
        """% promoters − % detractors, in [−100, 100]; None without responses."""
        if self.responses == 0:
            return None
        return 100.0 * (self.promoters - self.detractors) / self.responses


def summarize_nps(scores: Iterable[int]) -> NpsSummary:
    promoters = passives = detractors = 0
    for score in scores:
        if not NPS_MIN <= score <= NPS_MAX:
            raise ValueError(f"NPS score {score} outside 0–10")
        if score >= 9:
            promoters += 1
        elif score >= 7:
            passives += 1
        else:
            detractors += 1
    return NpsSummary(promoters + passives + detractors, promoters, passives, detractors)


@dataclass(frozen=True, slots=True)
class CsatSummary:
    responses: int
    satisfied: int  # scores 4 and 5
    score_sum: int

    @property
    def csat(self) -> float | None:
        """Share of satisfied answers (4–5) in percent; None without responses."""
        return None if self.responses == 0 else 100.0 * self.satisfied / self.responses

    @property
    def mean(self) -> float | None:
        return None if self.responses == 0 else self.score_sum / self.responses


def summarize_csat(scores: Iterable[int]) -> CsatSummary:
    responses = satisfied = total = 0
    for score in scores:
        if not CSAT_MIN <= score <= CSAT_MAX:
            raise ValueError(f"CSAT score {score} outside 1–5")
        responses += 1
        total += score
        satisfied += score >= 4
    return CsatSummary(responses, satisfied, total)


Period = Literal["day", "week", "month"]


def period_start(moment: datetime, period: Period, zone: ZoneInfo) -> date:
    """The first local date of the day / ISO week (Monday) / month containing `moment`."""
    local = moment.astimezone(zone).date()
    if period == "day":
        return local
    if period == "week":
        return local - timedelta(days=local.weekday())
    return local.replace(day=1)


def trend(values: Sequence[float | None]) -> float | None:
    """Change of the last period against the previous one; None if either is missing."""
    if len(values) < 2 or values[-1] is None or values[-2] is None:
        return None
    return values[-1] - values[-2]


def response_rate(requested: int, answered: int, suppressed: int) -> float | None:
    """Answered share of surveys that really reached the customer: a suppressed survey is not unanswered."""
    delivered = requested - suppressed
    return None if delivered <= 0 else answered / delivered


# --------------------------------------------------------------------------------------------
# Listen: triggers, sampling, recontact
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerFact:
    """A consumed event that may trigger surveys."""

    tenant: str
    event_type: str
    event_id: str
    customer_id: str
    occurred_at: datetime
    is_first_purchase: bool = False


@dataclass(frozen=True, slots=True)
class PlannedSurvey:
    request_id: str
    survey_id: str
    kind: SurveyKind
    customer_id: str
    due_at: datetime
    trigger_event_type: str
    trigger_event_id: str


def sampling_draw(*parts: str) -> float:
    """A deterministic draw in [0, 1) from the cause, so a replay samples the same customers."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def plan_surveys(fact: TriggerFact, program: SurveysProgram) -> list[PlannedSurvey]:
    """Surveys this event asks for, each due `delay` after the event's time, after sampling."""
    planned: list[PlannedSurvey] = []
    for survey in program.surveys:
        trigger = survey.trigger
        if trigger.event != fact.event_type:
            continue
        if trigger.first_purchase_only and not fact.is_first_purchase:
            continue
        if sampling_draw(fact.tenant, fact.customer_id, survey.id, fact.event_id) >= survey.sampling_rate:
            continue
        planned.append(
            PlannedSurvey(
                request_id=derived_id("request", fact.tenant, survey.id, fact.event_id),
                survey_id=survey.id,
                kind=survey.kind,
                customer_id=fact.customer_id,
                due_at=fact.occurred_at + trigger.delay,
                trigger_event_type=fact.event_type,
                trigger_event_id=fact.event_id,
            )
        )
    return planned


TRIGGER_NAMES: Mapping[str, Literal["purchase", "delivery", "consultation"]] = {
    "PurchaseMade": "purchase",
    "DeliveryCompleted": "delivery",
    "ConsultationCompleted": "consultation",
}


def follow_up_request_id(tenant: str, feedback_id: str) -> str:
    return derived_id("follow-up", tenant, feedback_id)


def follow_up_question_key(kind: SurveyKind) -> str:
    """Template key of the follow-up question: what kept the answer from the top score."""
    return f"follow_up_{kind}"


class SendDecision(StrEnum):
    SEND = "send"
    SKIP_RECONTACT = "skip_recontact"


def decide_send(due_at: datetime, last_requested_at: datetime | None, recontact_period: timedelta) -> SendDecision:
    """No two surveys to one customer closer than the recontact period (in event time)."""
    if last_requested_at is not None and abs(due_at - last_requested_at) < recontact_period:
        return SendDecision.SKIP_RECONTACT
    return SendDecision.SEND


def decide_sends(
    due: Sequence[PlannedSurvey],
    last_requested_at: Mapping[str, datetime],
    recontact_period: timedelta,
) -> tuple[list[PlannedSurvey], list[PlannedSurvey]]:
    """Decide a batch of due surveys in due order; one sent in this batch counts for the next ones.

    Every survey sent is checked against the customer's last request and every one sent before it in
    the batch (the last request may lie after a due time when a log is replayed late).
    Returns (to send, skipped by the recontact period).
    """
    contacted: dict[str, list[datetime]] = {c: [t] for c, t in last_requested_at.items()}
    send: list[PlannedSurvey] = []
    skipped: list[PlannedSurvey] = []
    for planned in sorted(due, key=lambda p: (p.due_at, p.request_id)):
        earlier = contacted.setdefault(planned.customer_id, [])
        if all(decide_send(planned.due_at, t, recontact_period) is SendDecision.SEND for t in earlier):
            send.append(planned)
            earlier.append(planned.due_at)
        else:
            skipped.append(planned)
    return send, skipped


# --------------------------------------------------------------------------------------------
# The answer token: HMAC-signed, expiring, single use (the store keeps used request ids)
# --------------------------------------------------------------------------------------------


class TokenRejection(StrEnum):
    MALFORMED = "malformed"
    FORGED = "forged"
    EXPIRED = "expired"
    REUSED = "reused"


class TokenRejected(Exception):
    def __init__(self, reason: TokenRejection, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TokenClaims:
    tenant: str
    request_id: str
    customer_id: str
    survey_id: str
    kind: SurveyKind
    expires_at: datetime


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(claims: TokenClaims, secret: bytes) -> str:
    """`<payload>.<signature>`, both base64url; the payload is compact JSON, the signature HMAC-SHA256."""
    if not secret:
        raise ValueError("the token secret is empty")
    payload = json.dumps(
        {
            "v": 1,
            "t": claims.tenant,
            "r": claims.request_id,
            "c": claims.customer_id,
            "s": claims.survey_id,
            "k": claims.kind,
            "e": int(claims.expires_at.timestamp()),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    body = _b64(payload)
    signature = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(signature)}"


def _token_payload(token: str) -> tuple[str, str, dict[str, object]]:
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 2048:
        raise TokenRejected(TokenRejection.MALFORMED, "a token is '<payload>.<signature>'")
    body, signature = token.split(".")
    try:
        payload = json.loads(_unb64(body))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise TokenRejected(TokenRejection.MALFORMED, "the payload is not base64url JSON") from exc
    if not isinstance(payload, dict):
        raise TokenRejected(TokenRejection.MALFORMED, "the payload is not a JSON object")
    return body, signature, payload


def token_tenant(token: str) -> str:
    """The (unverified) tenant a token claims, to pick the secret it must be verified with."""
    _, _, payload = _token_payload(token)
    tenant = payload.get("t")
    if not isinstance(tenant, str) or not tenant:
        raise TokenRejected(TokenRejection.MALFORMED, "the payload names no tenant")
    return tenant


def verify_token(token: str, secrets: Sequence[bytes], now: datetime) -> TokenClaims:
    """Check the signature (any of the active secrets, for rotation) and the expiry; return the claims."""
    body, signature, payload = _token_payload(token)
    try:
        given = _unb64(signature)
    except (binascii.Error, ValueError) as exc:
        raise TokenRejected(TokenRejection.MALFORMED, "the signature is not base64url") from exc
    if not any(s and hmac.compare_digest(given, hmac.new(s, body.encode(), hashlib.sha256).digest()) for s in secrets):
        raise TokenRejected(TokenRejection.FORGED, "the signature does not match")
    try:
        claims = TokenClaims(
            tenant=_str(payload, "t"),
            request_id=_str(payload, "r"),
            customer_id=_str(payload, "c"),
            survey_id=_str(payload, "s"),
            kind=_kind(payload.get("k")),
            expires_at=datetime.fromtimestamp(_int(payload, "e"), UTC),
        )
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise TokenRejected(TokenRejection.MALFORMED, f"signed payload is incomplete: {exc}") from exc
    if now >= claims.expires_at:
        raise TokenRejected(TokenRejection.EXPIRED, f"the link expired at {claims.expires_at.isoformat()}")
    return claims


def _str(payload: Mapping[str, object], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {key!r} missing")
    return value


def _int(payload: Mapping[str, object], key: str) -> int:
    value = payload.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {key!r} missing")
    return value


def _kind(value: object) -> SurveyKind:
    if value == "nps":
        return "nps"
    if value == "csat":
        return "csat"
    if value == "question":
        return "question"
    raise ValueError(f"unknown survey kind {value!r}")


def check_single_use(claims: TokenClaims, already_answered: bool) -> None:
    if already_answered:
        raise TokenRejected(TokenRejection.REUSED, f"survey request {claims.request_id} was already answered")


# --------------------------------------------------------------------------------------------
# Answers → feedback (themes, follow-up, case, account)
# --------------------------------------------------------------------------------------------


class InvalidAnswer(ValueError):
    """An answer that cannot be feedback (score out of range, empty open answer)."""


MAX_COMMENT_CHARS = 4000


def validate_answer(kind: SurveyKind, score: int | None, comment: str | None) -> str | None:
    """Check the score against the survey kind; return the cleaned comment (None when blank).

    NPS takes 0–10; CSAT and the one-question survey take 1–5 (the contract's scales).
    """
    cleaned = comment.strip() if comment else None
    cleaned = cleaned or None
    if cleaned is not None and len(cleaned) > MAX_COMMENT_CHARS:
        raise InvalidAnswer(f"comment longer than {MAX_COMMENT_CHARS} characters")
    if score is None:
        raise InvalidAnswer(f"a {kind} survey needs a score")
    low, high = (NPS_MIN, NPS_MAX) if kind == "nps" else (CSAT_MIN, CSAT_MAX)
    if not low <= score <= high:
        raise InvalidAnswer(f"{kind} score {score} is outside {low}–{high}")
    return cleaned


def _normalize(text: str) -> str:
    # casefold for case, ё→е because Russian writers use both spellings of the same word.
    return unicodedata.normalize("NFC", text).casefold().replace("ё", "е")


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def tag_themes(text: str | None, rules: Sequence[ThemeRule]) -> tuple[str, ...]:
    """Themes whose keywords or patterns occur in the text, in rule order, each once."""
    if not text:
        return ()
    normalized = _normalize(text)
    found: list[str] = []
    for rule in rules:
        if rule.theme in found:
            continue
        if any(_normalize(k) in normalized for k in rule.keywords if k) or any(
            _compiled(p).search(text) or _compiled(p).search(normalized) for p in rule.patterns
        ):
            found.append(rule.theme)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class Answer:
    tenant: str
    request_id: str
    survey_id: str
    kind: SurveyKind
    customer_id: str
    score: int | None
    comment: str | None
    answered_at: datetime
    is_follow_up: bool = False


@dataclass(frozen=True, slots=True)
class CasePlan:
    case_id: str
    queue: str
    opened_at: datetime
    deadline_at: datetime


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    feedback_id: str
    sentiment: Sentiment | None
    comment: str | None
    themes: tuple[str, ...]
    follow_up_due_at: datetime | None
    case: CasePlan | None
    account_facts: tuple[AccountFact, ...]


def wants_follow_up(
    kind: SurveyKind,
    score: int | None,
    comment: str | None,
    program: SurveysProgram,
    *,
    is_follow_up: bool = False,
) -> bool:
    """High but not perfect, and silent: ask a little later what kept it from the top score.

    An answer to a follow-up never asks again (one follow-up per original answer, no loops).
    """
    if comment or score is None or is_follow_up:
        return False
    if kind == "nps":
        return score in program.follow_up.nps_scores
    if kind == "csat":
        return score in program.follow_up.csat_scores
    return False


def queue_for(themes: Sequence[str], program: SurveysProgram) -> str:
    for queue in program.cases.queues:
        if any(t in queue.themes for t in themes):
            return queue.name
    return program.cases.default_queue


def evaluate_answer(answer: Answer, program: SurveysProgram, calendar: BusinessCalendar) -> FeedbackOutcome:
    """Everything an answer leads to. Raises InvalidAnswer for answers that cannot be feedback."""
    comment = validate_answer(answer.kind, answer.score, answer.comment)
    sentiment = sentiment_of(answer.kind, answer.score)
    themes = tag_themes(comment, program.themes)
    feedback_id = derived_id("feedback", answer.tenant, answer.request_id)
    follow_up_due_at = (
        answer.answered_at + program.follow_up.delay
        if wants_follow_up(answer.kind, answer.score, comment, program, is_follow_up=answer.is_follow_up)
        else None
    )
    case = None
    if sentiment == "detractor":
        case = CasePlan(
            case_id=derived_id("case", answer.tenant, feedback_id),
            queue=queue_for(themes, program),
            opened_at=answer.answered_at,
            deadline_at=add_business_time(answer.answered_at, program.cases.response_deadline, calendar),
        )
    facts: list[AccountFact] = ["survey_answered"]
    if answer.kind == "nps" and sentiment is not None:
        facts.append(f"{sentiment}_score")  # type: ignore[arg-type]
    elif sentiment is not None:
        facts.append(
            {"promoter": "csat_satisfied", "passive": "csat_neutral", "detractor": "csat_dissatisfied"}[sentiment]  # type: ignore[arg-type]
        )
    return FeedbackOutcome(feedback_id, sentiment, comment, themes, follow_up_due_at, case, tuple(facts))


def decide_follow_up(feedback_id: str, already_requested: Iterable[str]) -> bool:
    """At most one follow-up per answer, whatever the number of timer firings or redeliveries."""
    return feedback_id not in set(already_requested)


# --------------------------------------------------------------------------------------------
# Act: cases, deadlines, closing the loop
# --------------------------------------------------------------------------------------------


class CaseStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class CaseState:
    case_id: str
    customer_id: str
    status: CaseStatus
    opened_at: datetime
    deadline_at: datetime
    breached: bool
    queue: str | None = None


class UnknownCase(LookupError):
    """CaseResolved names a case this service never opened."""


def deadline_breached(case: CaseState, now: datetime) -> bool:
    """A case still open at its deadline escalates exactly once."""
    return case.status is CaseStatus.OPEN and not case.breached and now >= case.deadline_at


@dataclass(frozen=True, slots=True)
class CaseResolution:
    case_id: str
    resolved_at: datetime
    time_to_resolve: timedelta
    business_time_to_resolve: timedelta
    within_deadline: bool
    account_fact: AccountFact


def resolve_case(
    case: CaseState | None, case_id: str, resolved_at: datetime, calendar: BusinessCalendar
) -> CaseResolution | None:
    """Resolution of an open case; None when it was already resolved (a repeat closes no loop twice)."""
    if case is None:
        raise UnknownCase(f"no case {case_id}")
    if case.status is CaseStatus.RESOLVED:
        return None
    within = resolved_at <= case.deadline_at
    return CaseResolution(
        case_id=case.case_id,
        resolved_at=resolved_at,
        time_to_resolve=max(resolved_at - case.opened_at, timedelta(0)),
        business_time_to_resolve=business_time_between(case.opened_at, resolved_at, calendar),
        within_deadline=within,
        account_fact="case_resolved" if within else "case_resolved_late",
    )


def sla_compliance(resolved_within: int, resolved_late: int, open_breached: int) -> float | None:
    """Share of cases that met their deadline among those whose outcome is known."""
    known = resolved_within + resolved_late + open_breached
    return None if known == 0 else resolved_within / known


# --------------------------------------------------------------------------------------------
# You said, we did
# --------------------------------------------------------------------------------------------


def improvement_window(
    shipped_at: datetime, window: timedelta, since: datetime | None = None
) -> tuple[datetime, datetime]:
    """Feedback given in [max(shipped_at − window, since), shipped_at] raised the theme before the change."""
    start = shipped_at - window
    if since is not None and since > start:
        start = since
    return start, shipped_at


@dataclass(frozen=True, slots=True)
class ThemedFeedback:
    customer_id: str
    themes: tuple[str, ...]
    given_at: datetime


def improvement_recipients(
    feedback: Iterable[ThemedFeedback],
    theme: str,
    shipped_at: datetime,
    window: timedelta,
    already_told: Iterable[str] = (),
    since: datetime | None = None,
) -> list[str]:
    """Exactly the customers who raised the theme within the window and were not told yet, once each."""
    start, end = improvement_window(shipped_at, window, since)
    told = set(already_told)
    chosen = {f.customer_id for f in feedback if theme in f.themes and start <= f.given_at <= end}
    return sorted(chosen - told)


def message_for_locale(messages: Mapping[str, str], locale: str | None, default_locale: str) -> str:
    """The customer's language, else its base language, else the tenant's default, else any given."""
    for candidate in (locale, (locale or "").split("-")[0], default_locale):
        if candidate and candidate in messages:
            return messages[candidate]
    return messages[sorted(messages)[0]]


# --------------------------------------------------------------------------------------------
# Loyalty account
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountEntry:
    fact: AccountFact
    amount: int


def account_entries(facts: Iterable[AccountFact], weights: Mapping[AccountFact, int]) -> list[AccountEntry]:
    """Deposits (>0) and withdrawals (<0); facts without a weight (or weight 0) leave no entry."""
    return [AccountEntry(f, weights[f]) for f in facts if weights.get(f, 0) != 0]


@dataclass(frozen=True, slots=True)
class BalanceChange:
    balance: int
    became_at_risk: bool


def apply_entries(balance: int, entries: Iterable[AccountEntry]) -> BalanceChange:
    """New balance; at risk when it goes from non-negative to negative (flagged once per crossing)."""
    new = balance + sum(e.amount for e in entries)
    return BalanceChange(new, balance >= 0 > new)

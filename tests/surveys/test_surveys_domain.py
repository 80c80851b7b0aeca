"""Domain rules of the surveys service: unit examples and hypothesis properties."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_surveys import domain as d
from loyalty_surveys.program import ThemeRule

from .helpers import example_program

PROGRAM = example_program()
CALENDAR = PROGRAM.business_hours.calendar()
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)  # a Tuesday, 11:00 in Berlin
SECRET = b"test-secret-please-rotate"


def answer(kind: str = "nps", score: int | None = 9, comment: str | None = None, **kw: object) -> d.Answer:
    fields: dict[object, object] = {
        "tenant": "acme-diy",
        "request_id": "req-1",
        "survey_id": "first-purchase-nps",
        "kind": kind,
        "customer_id": "c-1",
        "score": score,
        "comment": comment,
        "answered_at": T0,
    }
    fields.update(kw)
    return d.Answer(**fields)  # type: ignore[arg-type]


# --- NPS / CSAT arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "sentiment"),
    [(0, "detractor"), (6, "detractor"), (7, "passive"), (8, "passive"), (9, "promoter"), (10, "promoter")],
)
def test_nps_boundaries(score: int, sentiment: str) -> None:
    assert d.sentiment_of("nps", score) == sentiment


@pytest.mark.parametrize(
    ("score", "sentiment"), [(1, "detractor"), (2, "detractor"), (3, "passive"), (4, "promoter"), (5, "promoter")]
)
def test_csat_boundaries(score: int, sentiment: str) -> None:
    assert d.sentiment_of("csat", score) == sentiment


def test_nps_example() -> None:
    # 5 promoters, 3 passives, 2 detractors → 50 % − 20 % = 30
    summary = d.summarize_nps([10, 9, 9, 10, 9, 7, 8, 8, 3, 6])
    assert (summary.promoters, summary.passives, summary.detractors) == (5, 3, 2)
    assert summary.nps == pytest.approx(30.0)
    assert d.summarize_nps([]).nps is None
    with pytest.raises(ValueError, match="outside"):
        d.summarize_nps([11])


@given(st.lists(st.integers(0, 10), max_size=200))
def test_nps_properties(scores: list[int]) -> None:
    summary = d.summarize_nps(scores)
    assert summary.responses == len(scores) == summary.promoters + summary.passives + summary.detractors
    if not scores:
        assert summary.nps is None
        return
    assert summary.nps is not None
    assert -100.0 <= summary.nps <= 100.0
    expected = 100 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores)
    assert summary.nps == pytest.approx(expected)
    assert d.summarize_nps(reversed(scores)) == summary  # order does not matter
    # adding a promoter never lowers NPS, adding a detractor never raises it
    assert d.summarize_nps([*scores, 10]).nps >= summary.nps  # type: ignore[operator]
    assert d.summarize_nps([*scores, 0]).nps <= summary.nps  # type: ignore[operator]


@given(st.lists(st.integers(1, 5), min_size=1, max_size=100))
def test_csat_properties(scores: list[int]) -> None:
    summary = d.summarize_csat(scores)
    assert summary.csat == pytest.approx(100 * sum(s >= 4 for s in scores) / len(scores))
    assert summary.mean == pytest.approx(sum(scores) / len(scores))


def test_trend_and_response_rate() -> None:
    assert d.trend([10.0, 25.0]) == 15.0
    assert d.trend([None, 25.0]) is None
    assert d.trend([25.0]) is None
    # 10 requested, 2 suppressed by the contact budget, 4 answered → 4 / 8, not 4 / 10
    assert d.response_rate(10, 4, 2) == 0.5
    assert d.response_rate(2, 0, 2) is None


def test_period_start_uses_the_retailers_zone() -> None:
    zone = CALENDAR.zone
    sunday_late_utc = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)  # already Monday in Berlin
    assert str(d.period_start(sunday_late_utc, "day", zone)) == "2026-11-30"
    assert str(d.period_start(sunday_late_utc, "week", zone)) == "2026-11-30"
    assert str(d.period_start(sunday_late_utc, "month", zone)) == "2026-11-01"


# --- triggers, sampling, recontact ---------------------------------------------------------


def fact(event_type: str, event_id: str = "ev-1", customer: str = "c-1", first: bool = False) -> d.TriggerFact:
    return d.TriggerFact("acme-diy", event_type, event_id, customer, T0, is_first_purchase=first)


def test_delivery_triggers_csat_two_days_later() -> None:
    [planned] = d.plan_surveys(fact("DeliveryCompleted"), PROGRAM)
    assert planned.survey_id == "delivery-csat"
    assert planned.kind == "csat"
    assert planned.due_at == T0 + timedelta(days=2)
    # deterministic: the same event plans the same request id
    assert d.plan_surveys(fact("DeliveryCompleted"), PROGRAM)[0].request_id == planned.request_id


def test_nps_only_after_the_first_purchase() -> None:
    assert d.plan_surveys(fact("PurchaseMade", first=False), PROGRAM) == []
    [planned] = d.plan_surveys(fact("PurchaseMade", first=True), PROGRAM)
    assert planned.kind == "nps"
    assert planned.due_at == T0 + timedelta(days=30)


def test_unrelated_events_trigger_nothing() -> None:
    assert d.plan_surveys(fact("ReviewLeft"), PROGRAM) == []


@given(st.lists(st.text(min_size=1, max_size=12), min_size=200, max_size=200, unique=True))
@settings(max_examples=20)
def test_sampling_rate_is_respected_and_deterministic(event_ids: list[str]) -> None:
    # the consultation question samples 50 %: over 200 distinct events the share is near one half
    chosen = [e for e in event_ids if d.plan_surveys(fact("ConsultationCompleted", e), PROGRAM)]
    assert 60 <= len(chosen) <= 140
    assert chosen == [e for e in event_ids if d.plan_surveys(fact("ConsultationCompleted", e), PROGRAM)]


def test_sampling_rate_zero_and_one() -> None:
    section_surveys = [s.model_dump() for s in PROGRAM.surveys]
    for s in section_surveys:
        s["sampling_rate"] = 0.0
    never = example_program(surveys=section_surveys)
    assert all(not d.plan_surveys(fact("DeliveryCompleted", f"e{i}"), never) for i in range(50))


def test_recontact_period_examples() -> None:
    period = timedelta(days=30)
    assert d.decide_send(T0, None, period) is d.SendDecision.SEND
    assert d.decide_send(T0, T0 - timedelta(days=29), period) is d.SendDecision.SKIP_RECONTACT
    assert d.decide_send(T0, T0 - timedelta(days=30), period) is d.SendDecision.SEND


planned_surveys = st.builds(
    d.PlannedSurvey,
    request_id=st.uuids().map(str),
    survey_id=st.just("delivery-csat"),
    kind=st.just("csat"),
    customer_id=st.sampled_from(["a", "b", "c"]),
    due_at=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    trigger_event_type=st.just("DeliveryCompleted"),
    trigger_event_id=st.just("x"),
)


@given(
    st.lists(planned_surveys, max_size=30),
    st.dictionaries(
        st.sampled_from(["a", "b"]), st.datetimes(datetime(2025, 11, 1), datetime(2026, 12, 31), timezones=st.just(UTC))
    ),
    st.integers(0, 60),
)
def test_recontact_never_two_surveys_within_the_period(
    due: list[d.PlannedSurvey], history: dict[str, datetime], days: int
) -> None:
    period = timedelta(days=days)
    send, skipped = d.decide_sends(due, history, period)
    assert sorted(p.request_id for p in send + skipped) == sorted(p.request_id for p in due)
    for customer in {p.customer_id for p in due}:
        times = sorted([p.due_at for p in send if p.customer_id == customer])
        if customer in history:
            assert all(abs(t - history[customer]) >= period for t in times)
        assert all(b - a >= period for a, b in itertools.pairwise(times))
        # the earliest due survey of a customer without history is always sent
        if customer not in history:
            assert times and times[0] == min(p.due_at for p in due if p.customer_id == customer)


# --- the answer token ----------------------------------------------------------------------


def claims(expires_at: datetime = T0 + timedelta(days=14)) -> d.TokenClaims:
    return d.TokenClaims("acme-diy", "req-1", "c-1", "delivery-csat", "csat", expires_at)


def test_token_round_trip_and_rotation() -> None:
    token = d.issue_token(claims(), SECRET)
    assert d.token_tenant(token) == "acme-diy"
    assert d.verify_token(token, [SECRET], T0) == claims()
    # after rotation the old secret still verifies while it is listed
    assert d.verify_token(token, [b"new-secret", SECRET], T0).request_id == "req-1"


def test_token_forged_expired_malformed_reused() -> None:
    token = d.issue_token(claims(), SECRET)
    with pytest.raises(d.TokenRejected) as forged:
        d.verify_token(token, [b"another secret"], T0)
    assert forged.value.reason is d.TokenRejection.FORGED
    # change the claims (another request) and keep the signature
    other = d.issue_token(
        d.TokenClaims("acme-diy", "req-2", "c-1", "delivery-csat", "csat", claims().expires_at), SECRET
    )
    tampered = other.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(d.TokenRejected) as tampered_error:
        d.verify_token(tampered, [SECRET], T0)
    assert tampered_error.value.reason is d.TokenRejection.FORGED
    with pytest.raises(d.TokenRejected) as expired:
        d.verify_token(token, [SECRET], T0 + timedelta(days=14))
    assert expired.value.reason is d.TokenRejection.EXPIRED
    for garbage in ["", "abc", "a.b.c", "!!!.???", "e30.AAAA"]:
        with pytest.raises(d.TokenRejected) as malformed:
            d.verify_token(garbage, [SECRET], T0)
        assert malformed.value.reason in {d.TokenRejection.MALFORMED, d.TokenRejection.FORGED}
    with pytest.raises(d.TokenRejected) as reused:
        d.check_single_use(claims(), already_answered=True)
    assert reused.value.reason is d.TokenRejection.REUSED
    d.check_single_use(claims(), already_answered=False)


@given(st.text(max_size=300))
def test_any_text_is_rejected_with_a_reason_never_crashes(text: str) -> None:
    with pytest.raises(d.TokenRejected):
        d.verify_token(text, [SECRET], T0)


@given(st.binary(min_size=1, max_size=64), st.binary(min_size=1, max_size=64))
def test_token_verifies_only_with_its_own_secret(secret: bytes, other: bytes) -> None:
    token = d.issue_token(claims(), secret)
    assert d.verify_token(token, [secret], T0).request_id == "req-1"
    if other != secret:
        with pytest.raises(d.TokenRejected):
            d.verify_token(token, [other], T0)


# --- answers, themes, follow-ups, cases ----------------------------------------------------


def test_answer_validation() -> None:
    assert d.validate_answer("nps", 10, "  great  ") == "great"
    assert d.validate_answer("csat", 4, "   ") is None
    for kind, score, comment, reason in [
        ("nps", 11, None, "outside"),
        ("csat", 0, None, "outside"),
        ("csat", None, None, "needs a score"),
        ("question", 6, "x", "outside"),
        ("question", None, "only words", "needs a score"),
        ("nps", 5, "x" * 5000, "longer"),
    ]:
        with pytest.raises(d.InvalidAnswer, match=reason):
            d.validate_answer(kind, score, comment)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "themes"),
    [
        ("The courier was late and rude", ("delivery", "staff")),
        ("ДОСТАВКА опоздала на два дня", ("delivery",)),
        ("Консультант был груб, а курьер не позвонил", ("delivery", "staff")),
        ("Качество ужасное, дрель сломалась", ("quality",)),
        ("Всё отлично, ёмкость огромная", ()),
        ("chocolate for everyone", ()),  # 'late' matches only as a word
        ("Way overpriced", ("price",)),
        ("", ()),
    ],
)
def test_themes_in_english_and_russian(text: str, themes: tuple[str, ...]) -> None:
    assert d.tag_themes(text, PROGRAM.themes) == themes


def test_theme_keywords_ignore_yo_spelling() -> None:
    rules = [ThemeRule(theme="returns", keywords=["возврат денег", "ещё раз"])]
    assert d.tag_themes("Пришлось звонить еще раз", rules) == ("returns",)
    assert d.tag_themes("ЕЩЁ РАЗ звонил", rules) == ("returns",)


@pytest.mark.parametrize(
    ("kind", "score", "comment", "wanted"),
    [
        ("csat", 4, None, True),
        ("nps", 7, None, True),
        ("nps", 8, "", True),
        ("csat", 4, "the box was dented", False),
        ("csat", 5, None, False),
        ("nps", 9, None, False),
        ("nps", 6, None, False),
    ],
)
def test_follow_up_only_for_silent_high_but_not_perfect(
    kind: str, score: int, comment: str | None, wanted: bool
) -> None:
    outcome = d.evaluate_answer(answer(kind, score, comment), PROGRAM, CALENDAR)
    assert (outcome.follow_up_due_at is not None) is wanted
    if wanted:
        assert outcome.follow_up_due_at == T0 + timedelta(days=1)


@given(st.lists(st.sampled_from(["f1", "f2", "f3"]), max_size=40))
def test_follow_up_at_most_once_per_answer(firings: list[str]) -> None:
    # timer firings and redeliveries arrive in any order and any number; each answer gets at most one
    sent: list[str] = []
    for feedback_id in firings:
        if d.decide_follow_up(feedback_id, sent):
            sent.append(feedback_id)
    assert sorted(sent) == sorted(set(firings))


def test_detractor_opens_a_case_with_a_business_hours_deadline() -> None:
    # Friday 16:00 Berlin, 8 business hours: Fri 1h, Sat 4h, Mon 3h → Monday 12:00 Berlin = 11:00 UTC
    friday = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
    outcome = d.evaluate_answer(answer("nps", 3, "The courier never called", answered_at=friday), PROGRAM, CALENDAR)
    assert outcome.sentiment == "detractor"
    assert outcome.case is not None
    assert outcome.case.queue == "logistics"
    assert outcome.case.deadline_at == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
    assert outcome.follow_up_due_at is None
    assert outcome.account_facts == ("survey_answered", "detractor_score")
    no_theme = d.evaluate_answer(answer("csat", 2, None), PROGRAM, CALENDAR)
    assert no_theme.case is not None and no_theme.case.queue == "customer-care"
    assert no_theme.account_facts == ("survey_answered", "csat_dissatisfied")
    assert d.evaluate_answer(answer("csat", 3), PROGRAM, CALENDAR).case is None


def test_ids_are_deterministic() -> None:
    first = d.evaluate_answer(answer("nps", 2), PROGRAM, CALENDAR)
    again = d.evaluate_answer(answer("nps", 2), PROGRAM, CALENDAR)
    assert first.feedback_id == again.feedback_id
    assert first.case and again.case and first.case.case_id == again.case.case_id
    other = d.evaluate_answer(answer("nps", 2, request_id="req-2"), PROGRAM, CALENDAR)
    assert other.feedback_id != first.feedback_id


def case_state(status: d.CaseStatus = d.CaseStatus.OPEN, breached: bool = False) -> d.CaseState:
    return d.CaseState("case-1", "c-1", status, T0, T0 + timedelta(hours=8), breached)


def test_breach_once_and_only_while_open() -> None:
    late = T0 + timedelta(hours=8)
    assert not d.deadline_breached(case_state(), late - timedelta(seconds=1))
    assert d.deadline_breached(case_state(), late)
    assert not d.deadline_breached(case_state(breached=True), late)
    assert not d.deadline_breached(case_state(d.CaseStatus.RESOLVED), late)


def test_resolution_closes_the_loop_once() -> None:
    resolution = d.resolve_case(case_state(), "case-1", T0 + timedelta(hours=2), CALENDAR)
    assert resolution is not None
    assert resolution.within_deadline and resolution.account_fact == "case_resolved"
    assert resolution.time_to_resolve == timedelta(hours=2)
    assert resolution.business_time_to_resolve == timedelta(hours=2)  # Tuesday 11:00–13:00 Berlin
    late = d.resolve_case(case_state(), "case-1", T0 + timedelta(days=3), CALENDAR)
    assert late is not None and not late.within_deadline and late.account_fact == "case_resolved_late"
    assert d.resolve_case(case_state(d.CaseStatus.RESOLVED), "case-1", T0, CALENDAR) is None
    with pytest.raises(d.UnknownCase):
        d.resolve_case(None, "case-9", T0, CALENDAR)


def test_sla_compliance() -> None:
    assert d.sla_compliance(3, 1, 0) == 0.75
    assert d.sla_compliance(0, 0, 0) is None


# --- you said, we did ----------------------------------------------------------------------

themed = st.builds(
    d.ThemedFeedback,
    customer_id=st.sampled_from([f"c{i}" for i in range(8)]),
    themes=st.lists(st.sampled_from(["delivery", "price", "staff"]), max_size=2, unique=True).map(tuple),
    given_at=st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
)


@given(st.lists(themed, max_size=40), st.sampled_from(["delivery", "price"]), st.integers(1, 200))
def test_improvement_reaches_exactly_the_right_customers_once(
    feedback: list[d.ThemedFeedback], theme: str, window_days: int
) -> None:
    shipped_at = datetime(2026, 9, 1, tzinfo=UTC)
    window = timedelta(days=window_days)
    first = d.improvement_recipients(feedback, theme, shipped_at, window)
    expected = {
        f.customer_id for f in feedback if theme in f.themes and shipped_at - window <= f.given_at <= shipped_at
    }
    assert first == sorted(expected)
    assert len(first) == len(set(first))
    # redelivered: everybody was told already, nobody hears it twice
    assert d.improvement_recipients(feedback, theme, shipped_at, window, already_told=first) == []


# --- loyalty account ------------------------------------------------------------------------


def test_account_entries_use_program_weights() -> None:
    weights = PROGRAM.loyalty_account.weights
    entries = d.account_entries(["survey_answered", "detractor_score", "passive_score"], weights)
    assert [(e.fact, e.amount) for e in entries] == [("survey_answered", 1), ("detractor_score", -5)]


@given(st.integers(-50, 50), st.lists(st.integers(-10, 10), max_size=10))
def test_at_risk_exactly_when_balance_turns_negative(balance: int, amounts: list[int]) -> None:
    change = d.apply_entries(balance, [d.AccountEntry("survey_answered", a) for a in amounts])
    assert change.balance == balance + sum(amounts)
    assert change.became_at_risk == (balance >= 0 and change.balance < 0)


def test_an_answer_to_a_follow_up_never_asks_again() -> None:
    outcome = d.evaluate_answer(answer("csat", 4, None, is_follow_up=True), PROGRAM, CALENDAR)
    assert outcome.follow_up_due_at is None


def test_one_question_survey_scores_like_csat() -> None:
    outcome = d.evaluate_answer(answer("question", 2, "Консультант не знал товар"), PROGRAM, CALENDAR)
    assert outcome.sentiment == "detractor"
    assert outcome.case is not None and outcome.case.queue == "store-staff"
    assert outcome.account_facts == ("survey_answered", "csat_dissatisfied")


def test_improvement_since_narrows_the_window() -> None:
    shipped = datetime(2026, 9, 1, tzinfo=UTC)
    feedback = [
        d.ThemedFeedback("early", ("delivery",), shipped - timedelta(days=100)),
        d.ThemedFeedback("recent", ("delivery",), shipped - timedelta(days=10)),
        d.ThemedFeedback("after", ("delivery",), shipped + timedelta(days=1)),
        d.ThemedFeedback("other-theme", ("price",), shipped - timedelta(days=10)),
    ]
    assert d.improvement_recipients(feedback, "delivery", shipped, timedelta(days=180)) == ["early", "recent"]
    since = shipped - timedelta(days=30)
    assert d.improvement_recipients(feedback, "delivery", shipped, timedelta(days=180), since=since) == ["recent"]


def test_message_for_locale() -> None:
    messages = {"en": "Delivery is faster", "ru": "Доставка быстрее"}
    assert d.message_for_locale(messages, "ru", "en") == "Доставка быстрее"
    assert d.message_for_locale(messages, "ru-RU", "en") == "Доставка быстрее"
    assert d.message_for_locale(messages, "de", "en") == "Delivery is faster"
    assert d.message_for_locale({"ru": "Только русский"}, "de", "en") == "Только русский"


answers = st.builds(
    answer,
    kind=st.sampled_from(["nps", "csat", "question"]),
    score=st.integers(0, 10),
    comment=st.one_of(
        st.none(), st.just(""), st.text(max_size=60), st.sampled_from(["courier late", "грубый персонал"])
    ),
    answered_at=st.datetimes(datetime(2026, 1, 1), datetime(2027, 12, 31), timezones=st.just(UTC)),
    is_follow_up=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(answers)
def test_every_valid_answer_leads_to_consistent_actions(a: d.Answer) -> None:
    low, high = (0, 10) if a.kind == "nps" else (1, 5)
    if a.score is None or not low <= a.score <= high:
        with pytest.raises(d.InvalidAnswer):
            d.evaluate_answer(a, PROGRAM, CALENDAR)
        return
    outcome = d.evaluate_answer(a, PROGRAM, CALENDAR)
    # a case exactly for detractors, a follow-up only for silent passives / 4s, never both
    assert (outcome.case is not None) == (outcome.sentiment == "detractor")
    if outcome.follow_up_due_at is not None:
        assert outcome.sentiment != "detractor" and outcome.comment is None and not a.is_follow_up
        assert outcome.follow_up_due_at == a.answered_at + PROGRAM.follow_up.delay
    if outcome.case is not None:
        # the deadline lies at least the response time of wall clock later, in open hours
        assert outcome.case.deadline_at - a.answered_at >= PROGRAM.cases.response_deadline
        assert CALENDAR.is_open(outcome.case.deadline_at - timedelta(microseconds=1))
        assert outcome.case.queue in {q.name for q in PROGRAM.cases.queues} | {PROGRAM.cases.default_queue}
    assert set(outcome.themes) <= {t.theme for t in PROGRAM.themes}
    assert outcome.account_facts[0] == "survey_answered" and len(outcome.account_facts) == 2

"""The synthetic retailer is deterministic and looks like a DIY store: refunds, seasonality, NPS, fraud."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from loyalty_contracts.envelope import decode, encode
from loyalty_contracts.events.retail import PurchaseMade, PurchaseRefunded
from loyalty_contracts.events.surveys import DetractorCaseOpened, SurveyRequested
from loyalty_kit.programs import load_programs
from loyalty_referrals.domain import ReferralBook, Rejected, SentToReview, derive_code
from loyalty_referrals.handlers import invitation_of, purchase_of, refund_of, registration_of
from loyalty_referrals.program import ReferralsProgram
from loyalty_suite.demo.retailer import (
    COMMENTS,
    RetailerConfig,
    build_plan,
    expected_facts,
    nps_answer,
    resolve_case,
)

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"
SECRET = b"demo-referral-secret-32-bytes-long!!"
CONFIG = RetailerConfig(customers=300, days=120, seed=11, referral_secret=SECRET)


@pytest.fixture(scope="module")
def plan():  # type: ignore[no-untyped-def]
    return build_plan(CONFIG)


def test_same_config_same_stream_other_seed_other_stream(plan) -> None:  # type: ignore[no-untyped-def]
    again = build_plan(CONFIG)
    assert [encode(e) for e in again.envelopes] == [encode(e) for e in plan.envelopes]
    other = build_plan(RetailerConfig(customers=300, days=120, seed=12, referral_secret=SECRET))
    assert [e.id for e in other.envelopes] != [e.id for e in plan.envelopes]


def test_stream_is_in_event_time_order_and_decodes(plan) -> None:  # type: ignore[no-untyped-def]
    times = [e.time for e in plan.envelopes]
    assert times == sorted(times)
    assert CONFIG.start <= times[0] and times[-1] <= CONFIG.end
    for env in plan.envelopes[::50]:
        record = encode(env)
        assert decode(record.key, record.value, record.headers, known_tenants={"acme-diy"}) == env
        assert env.source == "retailer/acme-diy" and env.traceparent


def test_every_kind_of_fact_is_there(plan) -> None:  # type: ignore[no-untyped-def]
    counts = expected_facts(plan.envelopes).counts
    for name in ("CustomerRegistered", "PurchaseMade", "PurchaseRefunded", "DeliveryCompleted", "ReviewLeft",
                 "FriendInvited", "CommunityActivity", "ConsentChanged", "ImprovementShipped"):
        assert counts.get(name, 0) > 0, name
    assert counts["ImprovementShipped"] == 1
    assert counts["PurchaseMade"] > 4 * counts["CustomerRegistered"]


def test_refunds_are_about_five_percent_some_partial(plan) -> None:  # type: ignore[no-untyped-def]
    facts = expected_facts(plan.envelopes)
    assert 0.045 <= facts.refund_share <= 0.055
    refunds = [e.data for e in plan.envelopes if isinstance(e.data, PurchaseRefunded)]
    partial = sum(not r.full for r in refunds)
    assert 0.2 * len(refunds) <= partial <= 0.7 * len(refunds)
    orders = {e.data.order_id: e.data for e in plan.envelopes if isinstance(e.data, PurchaseMade)}
    for refund in refunds:  # a refund never exceeds its order and never precedes it
        assert refund.amount.amount_minor <= orders[refund.order_id].total.amount_minor
        assert refund.occurred_at > orders[refund.order_id].occurred_at


def test_weekends_are_busier_and_the_category_mix_is_diy(plan) -> None:  # type: ignore[no-untyped-def]
    purchases = [e.data for e in plan.envelopes if isinstance(e.data, PurchaseMade)]
    by_weekday = Counter(p.occurred_at.weekday() for p in purchases)
    weekday_avg = sum(by_weekday[d] for d in range(5)) / 5
    weekend_avg = (by_weekday[5] + by_weekday[6]) / 2
    assert weekend_avg > 1.25 * weekday_avg, by_weekday
    categories = Counter(line.category for p in purchases for line in p.lines)
    for category in ("power_tools", "drill_bits", "paint", "garden", "tools", "delivery_fee", "gift_card"):
        assert categories[category] > 0, category
    online = [p for p in purchases if p.sales_channel != "store"]
    assert 0.2 < len(online) / len(purchases) < 0.6


def test_nps_answers_follow_the_target_distribution() -> None:
    rng = random.Random(3)
    answers = [nps_answer(rng, "en" if i % 3 else "ru") for i in range(20_000)]
    share = Counter("promoter" if s >= 9 else "passive" if s >= 7 else "detractor" for s, _ in answers)
    assert abs(share["promoter"] / 20_000 - 0.45) < 0.015
    assert abs(share["passive"] / 20_000 - 0.35) < 0.015
    assert abs(share["detractor"] / 20_000 - 0.20) < 0.015
    passives = [(s, c) for s, c in answers if s in (7, 8)]
    assert sum(c is None for _, c in passives) > len(passives) / 2  # "7-8 without comment" → follow-ups
    assert any(c and any("а" <= ch <= "я" for ch in c) for _, c in answers)  # Russian comments too


def test_advocates_lean_to_promoters_without_moving_the_population_shares() -> None:
    rng = random.Random(8)
    population = [nps_answer(rng, "en", lean=2 * (rng.betavariate(2, 2) - 0.5))[0] for _ in range(20_000)]
    assert abs(sum(s >= 9 for s in population) / 20_000 - 0.45) < 0.015
    assert abs(sum(s <= 6 for s in population) / 20_000 - 0.20) < 0.015
    fans = [nps_answer(rng, "en", lean=0.8)[0] for _ in range(5000)]
    critics = [nps_answer(rng, "en", lean=-0.8)[0] for _ in range(5000)]
    assert sum(s >= 9 for s in fans) > 1.5 * sum(s >= 9 for s in critics)


def test_every_comment_hits_a_program_theme() -> None:
    themes = yaml.safe_load((PROGRAMS / "acme-diy.yaml").read_text())["surveys"]["themes"]
    keywords = [k.lower() for theme in themes for k in theme["keywords"]] + ["late", "overpriced"]
    for by_locale in COMMENTS.values():
        for comments in by_locale.values():
            for comment in comments:
                assert any(k in comment.lower() for k in keywords), comment


def test_cases_are_mostly_resolved_in_time_some_late_some_never() -> None:
    rng = random.Random(5)
    opened = datetime(2026, 7, 1, 10, tzinfo=UTC)
    case = DetractorCaseOpened(customer_id="c-1", occurred_at=opened, case_id="case-1", feedback_id="f-1",
                               score=3, deadline_at=opened + timedelta(hours=8))
    outcomes: Counter[str] = Counter()
    for _ in range(2000):
        resolution = resolve_case(case, None, rng)
        outcomes["open" if resolution is None else
                 "on_time" if resolution.occurred_at <= case.deadline_at else "late"] += 1
    assert outcomes["on_time"] > outcomes["late"] > 0 and outcomes["open"] > 0


def test_fraud_scenarios_are_caught_by_the_referrals_rules(plan) -> None:  # type: ignore[no-untyped-def]
    """Replay the stream through the referrals service's pure domain: each planned fraud gets its reason."""
    program = load_programs(PROGRAMS, "referrals", ReferralsProgram)["acme-diy"]
    book = ReferralBook("acme-diy", program.rules())
    outcomes: dict[str, str] = {}
    for env in plan.envelopes:
        data = env.data
        name = data.event_type
        if name == "CustomerRegistered":
            code = derive_code(SECRET, "acme-diy", data.customer_id, program.codes.length)
            effects = book.on_registered(registration_of(data), new_code=code)
        elif name == "FriendInvited":
            effects = book.on_invited(invitation_of(data))
        elif name == "PurchaseMade":
            effects = book.on_purchase(purchase_of(data))
        elif name == "PurchaseRefunded":
            effects = book.on_refund(refund_of(data))
        else:
            continue
        for effect in effects:
            if isinstance(effect, Rejected | SentToReview):
                outcomes.setdefault(effect.referee_id, effect.reason.value)
    kinds = {f.kind for f in plan.frauds}
    assert kinds == {"self_referral_card", "shared_address", "velocity", "blocked_domain", "cycle"}
    for fraud in plan.frauds:
        assert outcomes.get(fraud.referee_id) == fraud.expected_reason, fraud
    converted = [r for r in book.referrals.values() if r.reason is None]
    assert len(converted) >= 15  # plenty of honest referrals too


def test_without_the_code_secret_referrals_use_invitations(plan) -> None:  # type: ignore[no-untyped-def]
    no_codes = build_plan(RetailerConfig(customers=120, days=60, seed=11))
    registrations = [e.data for e in no_codes.envelopes if e.data.event_type == "CustomerRegistered"]
    assert all(r.referral_code is None for r in registrations)
    assert expected_facts(no_codes.envelopes).referral_claims > 5
    assert any("cycle" in reason for reason in no_codes.uncovered)


def test_survey_answer_references_the_request() -> None:
    from loyalty_suite.demo.retailer import answer_survey

    plan = build_plan(RetailerConfig(customers=20, days=14, seed=1))
    profile = next(p for p in plan.profiles.values() if p.consents.survey)
    at = datetime(2026, 6, 5, tzinfo=UTC)
    request = SurveyRequested(customer_id=profile.customer_id, occurred_at=at, request_id="req-1",
                              survey_id="first-purchase-nps", kind="nps", answer_token="t" * 20,
                              answer_url="https://x.example/a", expires_at=at + timedelta(days=14),
                              trigger="purchase")
    answer = answer_survey(request, profile, at + timedelta(hours=1), random.Random(1), answer_share=1.0)
    assert answer is not None
    assert (answer.request_id, answer.survey_id, answer.customer_id) == ("req-1", "first-purchase-nps",
                                                                         profile.customer_id)
    assert 0 <= answer.score <= 10

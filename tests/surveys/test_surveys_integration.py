"""End to end over real Kafka + Postgres: delivery → delayed survey → answer → follow-up / case → resolution →
loop closed; deadline breach; the contact budget; "you said, we did" reaching exactly the right customers once;
the loyalty account; the read API. Timers run on the event-time clock, so the test moves time by publishing."""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from loyalty_contracts.base import TENANT_SUBJECT, Money
from loyalty_contracts.catalogue import topics_produced_by
from loyalty_contracts.envelope import Envelope, decode
from loyalty_contracts.events import notifier, retail, tiers
from loyalty_kit.service import ServiceApp
from loyalty_kit.testing import (
    TopicReader,
    fresh_database,
    http_client,
    isolated_settings,
    publish,
    running,
    wait_until,
)
from loyalty_kit.topics import delete_topics_with_prefix, ensure_topics
from loyalty_surveys import domain
from loyalty_surveys.app import build_app

from .helpers import EXAMPLE_PROGRAM, example_program

pytestmark = pytest.mark.integration

TENANT = "acme-diy"
SECRET_ENV = {"LOYALTY_SURVEYS_TOKEN_SECRET_ACME_DIY": "integration-secret-1"}
API_KEY = {"Authorization": "Bearer acme-demo-key"}
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
T = NOW - timedelta(days=10)


def env(data: Any) -> Envelope:
    return Envelope.new(data, tenant=TENANT, source="/test/retailer")


def purchase(customer: str, order: str, at: datetime) -> Envelope:
    line = retail.PurchaseLine(
        line_id="1", sku="DRILL", category="tools", quantity=1, unit_price=Money(amount_minor=9999, currency="EUR")
    )
    return env(
        retail.PurchaseMade(
            customer_id=customer,
            occurred_at=at,
            order_id=order,
            store_id="store-1",
            sales_channel="store",
            lines=[line],
            total=Money(amount_minor=9999, currency="EUR"),
        )
    )


def clock(at: datetime) -> Envelope:
    """An event whose only job here is to move the tenant's event-time watermark."""
    return env(
        tiers.TierChanged(
            customer_id="clock",
            occurred_at=at,
            from_tier=None,
            to_tier="novice",
            direction="up",
            reason="threshold_reached",
            effective_at=at,
        )
    )


def registered(customer: str, locale: str) -> Envelope:
    return env(
        retail.CustomerRegistered(
            customer_id=customer,
            occurred_at=T - timedelta(days=1),
            name="Ира",
            locale=locale,
            time_zone="Europe/Moscow",
            contacts=retail.Contacts(phone="+79001234567"),
            consents=retail.Consents(survey=True),
        )
    )


def sampled_consultation(customer: str) -> Envelope:
    """A consultation the 50 % sampling picks (the draw is deterministic in the event id)."""
    program = example_program()
    while True:
        candidate = env(
            retail.ConsultationCompleted(
                customer_id=customer, occurred_at=T, consultation_id=uuid.uuid4().hex, store_id="store-1"
            )
        )
        fact = domain.TriggerFact(TENANT, "ConsultationCompleted", candidate.id, customer, T)
        if domain.plan_surveys(fact, program):
            return candidate


@pytest.fixture
async def surveys_app(
    kafka_bootstrap: str, pg_admin_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[ServiceApp, str, str]]:
    suffix = uuid.uuid4().hex[:8]
    name = f"sv_{suffix}"
    programs = tmp_path / "programs"
    programs.mkdir()
    shutil.copy(EXAMPLE_PROGRAM, programs / EXAMPLE_PROGRAM.name)
    async with fresh_database(pg_admin_dsn, prefix="sv_") as dsn:
        settings = isolated_settings(
            name, kafka_bootstrap, dsn, suffix, pg_admin_dsn=dsn, timer_clock="event", programs_dir=programs
        )
        app, _ = build_app(settings, environ=SECRET_ENV)
        prefix = settings.topic_prefix
        await ensure_topics(kafka_bootstrap, [prefix + t for t in topics_produced_by("surveys")], prefix=prefix)
        try:
            yield app, prefix, dsn
        finally:
            # A shared broker runs out of memory if every test run leaves its ~30 topics behind.
            await delete_topics_with_prefix(kafka_bootstrap, prefix)
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await conn.close()


def events_of(reader: TopicReader, event_type: str) -> list[Envelope]:
    found = []
    for rec in reader.records:
        headers = dict(rec.headers or ())
        if headers.get("ce_type") == f"loyalty.{event_type}.v1".encode():
            found.append(decode(rec.key, rec.value, rec.headers))
    return found


async def wait_events(reader: TopicReader, event_type: str, count: int) -> list[Envelope]:
    ce_type = f"loyalty.{event_type}.v1".encode()
    await reader.wait_for(count, where=lambda r: dict(r.headers or ()).get("ce_type") == ce_type, within_s=60)
    return events_of(reader, event_type)


async def test_listen_hear_act_end_to_end(surveys_app: tuple[ServiceApp, str, str], kafka_bootstrap: str) -> None:
    app, prefix, _ = surveys_app
    out_topics = [prefix + t for t in topics_produced_by("surveys")]
    customers = ["c-happy", "c-angry", "c-ignored", "c-budget"]
    async with running(app), TopicReader(kafka_bootstrap, *out_topics, app.dlq_topic) as reader:
        client = http_client(app)

        # 0. A Russian-speaking customer registers (processed first: topics are not ordered among each other).
        await publish(kafka_bootstrap, [registered("c-ru", "ru")], topic_prefix=prefix)
        pool = app.pool
        assert pool is not None
        await wait_until(lambda: pool.fetchval("SELECT locale FROM customers WHERE customer_id = 'c-ru'"))

        # 1. Deliveries → CSAT requested two days later (event time), one per customer, nothing before.
        await publish(
            kafka_bootstrap,
            [
                e
                for i, c in enumerate(customers)
                for e in (
                    purchase(c, f"o-{c}", T),
                    env(
                        retail.DeliveryCompleted(
                            customer_id=c, occurred_at=T + timedelta(hours=1 + i), order_id=f"o-{c}"
                        )
                    ),
                )
            ],
            topic_prefix=prefix,
        )
        # ... and a Russian-speaking customer's consultation → the one question an hour later, in Russian.
        await publish(kafka_bootstrap, [sampled_consultation("c-ru")], topic_prefix=prefix)
        await publish(kafka_bootstrap, [clock(T + timedelta(days=2))], topic_prefix=prefix)
        await publish(kafka_bootstrap, [clock(T + timedelta(days=2, hours=6))], topic_prefix=prefix)
        requested = await wait_events(reader, "SurveyRequested", 5)
        [question] = [e.data for e in requested if e.data.kind == "question"]
        assert question.customer_id == "c-ru" and question.survey_id == "consultation-question"
        assert question.question == "Что одно сделало бы консультацию лучше?"
        assert question.trigger == "consultation" and question.occurred_at == T + timedelta(hours=1)
        by_customer = {e.data.customer_id: e for e in requested if e.data.kind == "csat"}
        assert sorted(by_customer) == sorted(customers)
        happy_request = by_customer["c-happy"].data
        assert happy_request.kind == "csat" and happy_request.survey_id == "delivery-csat"
        assert happy_request.occurred_at == T + timedelta(days=2, hours=1)
        assert happy_request.answer_url.endswith(happy_request.answer_token)

        # 2. The answer link: bad tokens get 4xx with reasons; a good one becomes feedback exactly once.
        token = happy_request.answer_token
        body, signature = token.split(".")
        forged = await client.post("/surveys/v1/answers", json={"token": body + "." + signature[::-1], "score": 4})
        assert forged.status_code == 403 and "forged" in forged.json()["detail"]
        malformed = await client.post("/surveys/v1/answers", json={"token": "not-a-token", "score": 4})
        assert malformed.status_code == 400 and "malformed" in malformed.json()["detail"]
        out_of_range = await client.post("/surveys/v1/answers", json={"token": token, "score": 9})
        assert out_of_range.status_code == 422 and "outside 1–5" in out_of_range.json()["detail"]
        ok = await client.post("/surveys/v1/answers", json={"token": token, "score": 4})
        assert ok.status_code == 201, ok.text
        again = await client.post("/surveys/v1/answers", json={"token": token, "score": 5})
        assert again.status_code == 409 and "reused" in again.json()["detail"]

        # 3. Answers as events; a detractor opens a case; an unknown request goes to the dead-letter topic.
        answered_at = T + timedelta(days=2, hours=7)
        angry = env(
            retail.SurveyAnswered(
                customer_id="c-angry",
                occurred_at=answered_at,
                survey_id="delivery-csat",
                request_id=by_customer["c-angry"].data.request_id,
                score=1,
                comment="The courier was rude and late",
                answer_channel="sms",
            )
        )
        ignored = env(
            retail.SurveyAnswered(
                customer_id="c-ignored",
                occurred_at=answered_at,
                survey_id="delivery-csat",
                request_id=by_customer["c-ignored"].data.request_id,
                score=2,
                comment="Доставка опоздала на день",
                answer_channel="telegram",
            )
        )
        unknown = env(
            retail.SurveyAnswered(
                customer_id="c-happy",
                occurred_at=answered_at,
                survey_id="delivery-csat",
                request_id="no-such-request",
                score=3,
                answer_channel="web",
            )
        )
        suppressed = env(
            notifier.NotificationSuppressed(
                customer_id="c-budget",
                occurred_at=T + timedelta(days=2, hours=5),
                source_event_id=by_customer["c-budget"].id,
                source_event_type="loyalty.SurveyRequested.v1",
                category="survey",
                reason="contact_budget",
            )
        )
        await publish(kafka_bootstrap, [angry, ignored, unknown, suppressed], topic_prefix=prefix)
        feedback = await wait_events(reader, "FeedbackReceived", 3)
        assert {f.data.customer_id: f.data.score for f in feedback} == {"c-happy": 4, "c-angry": 1, "c-ignored": 2}
        assert set(next(f for f in feedback if f.data.customer_id == "c-angry").data.themes) == {"delivery", "staff"}
        cases = {c.data.customer_id: c.data for c in await wait_events(reader, "DetractorCaseOpened", 2)}
        assert sorted(cases) == ["c-angry", "c-ignored"]
        assert cases["c-angry"].queue == "logistics"  # courier → delivery theme → logistics queue
        assert cases["c-angry"].deadline_at > answered_at + timedelta(hours=8) - timedelta(seconds=1)
        dead = await reader.wait_for(1, where=lambda r: r.topic == app.dlq_topic, within_s=60)
        dlq_headers = dict(dead[0].headers or ())
        assert dlq_headers["dlq_reason"] == b"handler_failed"
        assert b"UnknownRequest" in dlq_headers["dlq_error"]

        # 4. The case is resolved → the loop is closed with the personal reply, once.
        resolved = env(
            retail.CaseResolved(
                customer_id="c-angry",
                occurred_at=answered_at + timedelta(hours=1),
                case_id=cases["c-angry"].case_id,
                reply="We are sorry: the courier company has been warned and you get free delivery next time.",
                resolved_by="agent-7",
            )
        )
        await publish(kafka_bootstrap, [resolved, env(resolved.data)], topic_prefix=prefix)  # a resend too
        [closed] = await wait_events(reader, "LoopClosed", 1)
        assert closed.data.case_id == cases["c-angry"].case_id and closed.data.seconds_to_resolve == 3600
        assert closed.data.reply.startswith("We are sorry")

        # 5. Time passes (event time): the follow-up for the silent 4 goes out once; the open case escalates.
        await publish(kafka_bootstrap, [clock(NOW + timedelta(days=2))], topic_prefix=prefix)
        [follow_up] = await wait_events(reader, "FollowUpRequested", 1)
        assert follow_up.data.customer_id == "c-happy" and follow_up.data.question_key == "follow_up_csat"
        [breach] = await wait_events(reader, "CaseDeadlineBreached", 1)
        assert breach.data.case_id == cases["c-ignored"].case_id and breach.data.queue == "logistics"

        # 6. You said, we did: exactly the customers who raised "delivery", once, even when the news is resent.
        shipped = env(
            retail.ImprovementShipped(
                customer_id=TENANT_SUBJECT,
                occurred_at=NOW + timedelta(days=2, hours=1),
                improvement_id="imp-1",
                theme="delivery",
                messages={"en": "Delivery is now 2 days faster.", "ru": "Доставка теперь быстрее."},
            )
        )
        await publish(kafka_bootstrap, [shipped, env(shipped.data)], topic_prefix=prefix)
        told = await wait_events(reader, "YouSaidWeDid", 2)
        await publish(kafka_bootstrap, [clock(NOW + timedelta(days=2, hours=2))], topic_prefix=prefix)
        await _settle(app)
        told = events_of(reader, "YouSaidWeDid")
        assert sorted(t.data.customer_id for t in told) == ["c-angry", "c-ignored"]

        # Nothing went out twice.
        assert len(events_of(reader, "FollowUpRequested")) == 1
        assert len(events_of(reader, "LoopClosed")) == 1
        assert len(events_of(reader, "CaseDeadlineBreached")) == 1
        at_risk = Counter(e.data.customer_id for e in events_of(reader, "CustomerAtRisk"))
        assert at_risk == Counter({"c-angry": 1, "c-ignored": 1})

        # 7. The read API.
        rate_response = await client.get(f"/surveys/v1/tenants/{TENANT}/response-rate", headers=API_KEY)
        assert rate_response.status_code == 200, rate_response.text
        rate = rate_response.json()
        assert (rate["requested"], rate["answered"], rate["suppressed"]) == (5, 3, 1)
        assert rate["response_rate"] == 0.75  # 3 of the 4 that reached someone: suppressed is not unanswered
        ignored_account = (
            await client.get(f"/surveys/v1/tenants/{TENANT}/customers/c-ignored", headers=API_KEY)
        ).json()
        # delivery +1, answered +1, CSAT 1–2 −4, deadline breached −3, improvement told +2
        assert ignored_account["balance"] == -3 and ignored_account["at_risk"] is True
        angry_account = (await client.get(f"/surveys/v1/tenants/{TENANT}/customers/c-angry", headers=API_KEY)).json()
        assert angry_account["balance"] == 1 + 1 - 4 + 6 + 2
        case_view = (
            await client.get(f"/surveys/v1/tenants/{TENANT}/cases", params={"status": "all"}, headers=API_KEY)
        ).json()
        assert (case_view["open"], case_view["resolved_within_deadline"], case_view["open_breached"]) == (1, 1, 1)
        assert case_view["sla_compliance"] == 0.5
        csat = (
            await client.get(f"/surveys/v1/tenants/{TENANT}/csat", params={"period": "month"}, headers=API_KEY)
        ).json()
        assert sum(b["responses"] for b in csat["buckets"]) == 3
        themes = (await client.get(f"/surveys/v1/tenants/{TENANT}/themes", headers=API_KEY)).json()
        assert themes[0] == {"theme": "delivery", "mentions": 2, "detractor_share": 1.0}
        assert (await client.get(f"/surveys/v1/tenants/{TENANT}/nps", headers={})).status_code == 401
        bad_period = await client.get(f"/surveys/v1/tenants/{TENANT}/nps", params={"period": "year"}, headers=API_KEY)
        assert bad_period.status_code == 422
        assert (await client.get("/surveys/v1/tenants/other-shop/nps", headers=API_KEY)).status_code == 403

        # 8. The follow-up is answered and never asks again. Later the first-purchase NPS falls due, but within
        #    the recontact period of the delivery survey: recorded as skipped, never sent.
        follow_answer = await client.post(
            "/surveys/v1/answers", json={"token": follow_up.data.answer_token, "score": 4}
        )
        assert follow_answer.status_code == 201, follow_answer.text
        await publish(kafka_bootstrap, [clock(T + timedelta(days=31))], topic_prefix=prefix)

        async def nps_skipped() -> bool:
            view = (await client.get(f"/surveys/v1/tenants/{TENANT}/response-rate", headers=API_KEY)).json()
            return bool(view["skipped_recontact"] == 4)

        await wait_until(nps_skipped, within_s=60)
        await _settle(app)
        assert len(events_of(reader, "FollowUpRequested")) == 1
        assert len(events_of(reader, "FeedbackReceived")) == 4
        assert {e.data.kind for e in events_of(reader, "SurveyRequested")} == {"csat", "question"}
        await client.aclose()


async def _settle(app: ServiceApp) -> None:
    """Wait until the outbox is empty (everything decided has been published)."""
    import asyncio

    assert app.pool is not None
    for _ in range(200):
        if await app.pool.fetchval("SELECT count(*) FROM outbox") == 0:
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("outbox did not drain")

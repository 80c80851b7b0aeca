"""End to end over real Kafka + Postgres with real local provider servers: events in → messages at the
sinks → NotificationDelivered / Failed / Suppressed out. One wall-clock app (retries need real seconds)
and one event-clock app (quiet hours and journeys move with event time)."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from loyalty_contracts.base import Event
from loyalty_contracts.envelope import Envelope, decode
from loyalty_contracts.events import retail
from loyalty_contracts.samples import sample, with_customer
from loyalty_kit.testing import TopicReader, fresh_database, isolated_settings, publish, running, unique, wait_until
from loyalty_kit.topics import delete_topics_with_prefix
from loyalty_notifier.app import NotifierApp, NotifierSettings, build_app
from notifier_fakes import HttpFakes, SmtpSink, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = str(REPO / "programs" / "templates" / "acme-diy")
SECRET = "whsec_" + base64.b64encode(b"partner-secret-0123456789abcdef").decode()
OUT_TYPES = ("notification-delivered", "notification-failed", "notification-suppressed")


def header(tenant: str) -> dict[str, Any]:
    import hashlib

    return {
        "tenant": tenant,
        "display_name": tenant.title(),
        "default_locale": "en",
        "locales": ["en", "ru"],
        "timezone": "Europe/Berlin",
        "currency": "EUR",
        "api_keys": [{"name": "test", "sha256": hashlib.sha256(f"{tenant}-key".encode()).hexdigest()}],
    }


def notifier_section(smtp_port: int, http: str, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "templates_dir": TEMPLATES,
        "footer": {"en": "A robot sends this; people read replies.", "ru": "Отправил робот."},
        "unsubscribe_url": "https://shop.example/prefs?c={customer_id}&cat={category}",
        "unsubscribe_mailto": "unsubscribe@shop.example",
        "retry": {"schedule_seconds": [1, 1, 1], "jitter_fraction": 0.0},
        "channels": {
            "email": {"host": "127.0.0.1", "port": smtp_port, "from_address": "Shop <hello@shop.example>"},
            "sms": {"url": f"{http}/sms", "sender_id": "SHOP", "token_env": "SHOP_SMS_TOKEN"},
            "telegram": {"base_url": http, "token_env": "SHOP_TG_TOKEN"},
        },
        "routes": {
            "TierChanged": {"template": "tier_changed", "category": "service", "channels": ["email", "telegram"]},
            "SurveyRequested": {"template": "survey_request", "category": "survey", "channels": ["sms", "email"]},
            "TierProgressMilestone": {"template": "tier_progress", "category": "marketing", "channels": ["email"]},
        },
        "contact_budget": {"max_messages": 3, "per_days": 7, "marketing_reserve": 1},
        "frequency_caps": [{"category": "survey", "max_messages": 1, "per_days": 14}],
        "webhooks": [
            {
                "id": "crm",
                "url": f"{http}/hooks/crm",
                "secret_envs": ["SHOP_CRM_SECRET"],
                "event_types": ["DetractorCaseOpened"],
                "disable_after_failures": 5,
            }
        ],
    }
    section.update(extra)
    return section


@dataclass
class World:
    app: NotifierApp
    bootstrap: str
    prefix: str
    dsn: str
    smtp: SmtpSink
    http: HttpFakes
    out: TopicReader

    async def send(self, tenant: str, *events: Event) -> list[Envelope]:
        envs = [Envelope.new(e, tenant=tenant, source="/test/retailer") for e in events]
        await publish(self.bootstrap, envs, topic_prefix=self.prefix)
        return envs

    async def register(self, tenant: str, event: retail.CustomerRegistered) -> None:
        """Publish a registration and wait until it is applied (topics are consumed independently)."""
        await self.send(tenant, event)

        async def applied() -> bool:
            rows = await self.sql(
                "SELECT 1 FROM customers WHERE tenant = $1 AND customer_id = $2 AND registered_at IS NOT NULL",
                tenant,
                event.customer_id,
            )
            return bool(rows)

        await wait_until(applied, within_s=30)

    async def outcomes(self, source_event_id: str, n: int = 1, within_s: float = 30) -> list[Event]:
        def matches(rec: Any) -> bool:
            return json.loads(rec.value).get("source_event_id") == source_event_id

        records = await self.out.wait_for(n, within_s=within_s, where=matches)
        return [decode(r.key, r.value, r.headers).data for r in records]

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn, server_settings={"search_path": "notifier"})
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


ENV = {"SHOP_CRM_SECRET": SECRET, "SHOP_TG_TOKEN": "123:tg-token", "SHOP_SMS_TOKEN": "sms-token"}


def fill_in(programs: Path, values: dict[str, str]) -> None:
    for path in programs.glob("*.yaml"):
        text = path.read_text()
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        path.write_text(text)


async def _world(kafka_bootstrap: str, pg_admin_dsn: str, programs: Path, *, clock: str) -> AsyncIterator[World]:
    smtp = SmtpSink().start()
    http = await HttpFakes({"crm": SECRET}).start()
    try:
        fill_in(programs, {"{SMTP}": str(smtp.port), "{HTTP}": http.base_url})
        async with fresh_database(pg_admin_dsn, prefix="notifier_") as dsn:
            suffix = unique("")
            base = isolated_settings("notifier", kafka_bootstrap, dsn, suffix, timer_clock=clock)
            settings = NotifierSettings(
                **base.model_dump(exclude={"programs_dir"}), programs_dir=programs, sender_poll_interval_s=0.1
            )
            app = build_app(settings, environ=ENV)
            try:
                async with running(app):
                    topics = [f"{settings.topic_prefix}loyalty.{t}.v1" for t in OUT_TYPES]
                    async with TopicReader(kafka_bootstrap, *topics) as out:
                        yield World(app, kafka_bootstrap, settings.topic_prefix, dsn, smtp, http, out)
            finally:
                # ~23 prefixed topics per app: leaving them behind grows the shared broker's heap every run.
                await delete_topics_with_prefix(kafka_bootstrap, settings.topic_prefix)
    finally:
        await http.stop()
        smtp.stop()


def write_programs(root: Path, sections: dict[str, dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for tenant, section in sections.items():
        text = yaml.safe_dump({**header(tenant), "notifier": section}, allow_unicode=True)
        (root / f"{tenant}.yaml").write_text(text)
    return root


@pytest.fixture(scope="module")
async def wall(
    kafka_bootstrap: str, pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    closed_port = free_port()  # nothing listens here: "SMTP down"
    programs = write_programs(
        tmp_path_factory.mktemp("wall"),
        {
            "shop": notifier_section(0, "{HTTP}"),
            "shop-down": notifier_section(closed_port, "{HTTP}"),
        },
    )
    shop = programs / "shop.yaml"
    shop.write_text(shop.read_text().replace("port: 0", "port: {SMTP}"))
    async for world in _world(kafka_bootstrap, pg_admin_dsn, programs, clock="wall"):
        yield world


@pytest.fixture(scope="module")
async def night(
    kafka_bootstrap: str, pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    section = notifier_section(
        0,
        "{HTTP}",
        quiet_hours={"start": "21:00", "end": "08:00"},
        journeys={
            "onboarding": {
                "start_on": "PurchaseMade",
                "category": "service",
                "channels": ["email"],
                "paths": {
                    "default": [
                        {"step": "day0_thanks", "after_days": 0, "template": "onboarding_day0"},
                        {"step": "day7_beginner_answers", "after_days": 7, "template": "onboarding_day7"},
                    ],
                    "active_makers": [
                        {"step": "active_makers_welcome", "after_days": 0, "template": "onboarding_active"}
                    ],
                },
                "branches": [{"when_categories": ["drill_bits"], "to_path": "active_makers"}],
                "triggers": [
                    {
                        "when_categories": ["tools"],
                        "then": {"step": "first_tool_check", "after_days": 3, "template": "onboarding_tool_check"},
                    }
                ],
            }
        },
    )
    programs = write_programs(tmp_path_factory.mktemp("night"), {"night": section})
    path = programs / "night.yaml"
    path.write_text(path.read_text().replace("port: 0", "port: {SMTP}"))
    async for world in _world(kafka_bootstrap, pg_admin_dsn, programs, clock="event"):
        yield world


def registration(customer_id: str, at: datetime, **contacts: str | None) -> retail.CustomerRegistered:
    base = with_customer(sample("loyalty.CustomerRegistered.v1"), customer_id, at)
    return base.model_copy(
        update={
            "contacts": retail.Contacts(**contacts),
            "consents": retail.Consents(transactional=True, service=True, marketing=False, survey=True),
        }
    )


def now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------------- wall clock


async def test_email_is_multipart_with_unsubscribe_and_reported(wall: World) -> None:
    t = now()
    await wall.register("shop", registration("c-mail", t, email="anna@shop.test", telegram_chat_id="77"))
    (tier,) = await wall.send(
        "shop", with_customer(sample("loyalty.TierChanged.v1"), "c-mail", t + timedelta(seconds=1))
    )
    (delivered,) = await wall.outcomes(tier.id)
    assert type(delivered).event_type == "NotificationDelivered"
    assert delivered.channel == "email" and delivered.attempts == 1 and "anna" not in delivered.recipient_hash
    (message,) = wall.smtp.to("anna@shop.test")
    assert message["Subject"].startswith("Anna")
    assert message.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content() for p in message.iter_parts()}
    assert "Connoisseur" in parts["text/plain"] and "<strong>Connoisseur</strong>" in parts["text/html"]
    assert "people read replies" in parts["text/plain"]
    assert "<mailto:unsubscribe@shop.example" in message["List-Unsubscribe"]
    assert "https://shop.example/prefs?c=c-mail&cat=service" in message["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wall.app.asgi()), base_url="http://t") as api:
        metrics = (await api.get("/metrics")).text
    assert 'loyalty_notifier_deliveries_total{channel="email",outcome="delivered"}' in metrics
    assert 'loyalty_notifier_delivery_latency_seconds_count{channel="email"}' in metrics


async def test_webhook_http_500_then_success_is_retried_and_delivered_once(wall: World) -> None:
    wall.http.failures["hook:crm"] = [500]
    (case,) = await wall.send("shop", with_customer(sample("loyalty.DetractorCaseOpened.v1"), "c-hook", now()))
    (delivered,) = await wall.outcomes(case.id)
    assert delivered.channel == "webhook" and delivered.attempts == 2
    calls = [r.data for r in wall.http.webhooks if json.loads(r.data["body"])["data"]["customer_id"] == "c-hook"]
    assert [c["status"] for c in calls] == [500, 204]
    assert all(c["verified"] for c in calls) and calls[0]["id"] == calls[1]["id"]  # same webhook-id: dedupable
    assert json.loads(calls[1]["body"])["type"] == "loyalty.DetractorCaseOpened.v1"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wall.app.asgi()), base_url="http://t") as api:
        log = await api.get(
            "/notifier/v1/tenants/shop/webhooks/crm/deliveries", headers={"Authorization": "Bearer shop-key"}
        )
        assert log.status_code == 200
        attempts = log.json()[0]["attempts"]
        assert [a["status_code"] for a in attempts] == [500, 204] and log.json()[0]["status"] == "delivered"
    await asyncio.sleep(1.5)
    assert len(await wall.outcomes(case.id)) == 1  # and never reported twice


async def test_sms_500_is_retried_on_the_same_channel(wall: World) -> None:
    t = now()
    await wall.register("shop", registration("c-sms", t, phone="+491700000001", email="sms@shop.test"))
    wall.http.failures["sms"] = [503]
    survey = with_customer(sample("loyalty.SurveyRequested.v1"), "c-sms", t + timedelta(seconds=1))
    (req,) = await wall.send("shop", survey)
    (delivered,) = await wall.outcomes(req.id)
    assert (delivered.channel, delivered.attempts) == ("sms", 2)
    texts = [r.data for r in wall.http.sms if r.data["body"]["to"] == "+491700000001"]
    assert [t["status"] for t in texts] == [503, 200]
    assert texts[1]["auth"] == "Bearer sms-token" and survey.answer_url in texts[1]["body"]["text"]
    assert wall.smtp.to("sms@shop.test") == []  # a transient error is retried, not failed over


async def test_smtp_down_fails_over_to_telegram(wall: World) -> None:
    t = now()
    await wall.register("shop-down", registration("c-down", t, email="down@shop.test", telegram_chat_id="4242"))
    (tier,) = await wall.send("shop-down", with_customer(sample("loyalty.TierChanged.v1"), "c-down", t))
    (delivered,) = await wall.outcomes(tier.id)
    assert delivered.channel == "telegram"
    (call,) = [r.data for r in wall.http.telegram if r.data["body"]["chat_id"] == "4242"]
    assert call["token"] == "123:tg-token" and "Connoisseur" in call["body"]["text"]
    rows = await wall.sql("SELECT channel, status FROM deliveries WHERE source_event_id = $1 ORDER BY id", tier.id)
    assert [(r["channel"], r["status"]) for r in rows] == [("email", "failed_over"), ("telegram", "delivered")]


async def test_redelivered_and_replayed_events_send_no_second_message(wall: World) -> None:
    t = now()
    await wall.register("shop", registration("c-twice", t, email="twice@shop.test"))
    tier = with_customer(sample("loyalty.TierChanged.v1"), "c-twice", t + timedelta(seconds=1))
    env = Envelope.new(tier, tenant="shop", source="/test/retailer")
    await publish(wall.bootstrap, [env, env], topic_prefix=wall.prefix)  # a redelivery
    await wall.outcomes(env.id)
    # A replay after the inbox forgot the id: the deliveries' unique key still says "already planned".
    await wall.sql("DELETE FROM inbox WHERE id = $1", env.id)
    await publish(wall.bootstrap, [env], topic_prefix=wall.prefix)

    async def replay_applied() -> bool:
        return bool(await wall.sql("SELECT 1 FROM inbox WHERE id = $1", env.id))

    await wait_until(replay_applied, within_s=30)
    await asyncio.sleep(1.0)  # give a (wrong) second send time to happen
    assert len(wall.smtp.to("twice@shop.test")) == 1
    assert len(await wall.outcomes(env.id)) == 1


async def test_frequency_cap_suppresses_and_reports(wall: World) -> None:
    t = now()
    await wall.register("shop", registration("c-cap", t, phone="+491700000002"))
    first, second = await wall.send(
        "shop",
        with_customer(sample("loyalty.SurveyRequested.v1"), "c-cap", t + timedelta(seconds=1)),
        with_customer(sample("loyalty.SurveyRequested.v1"), "c-cap", t + timedelta(seconds=2)),
    )
    (ok,) = await wall.outcomes(first.id)
    (suppressed,) = await wall.outcomes(second.id)
    assert type(ok).event_type == "NotificationDelivered"
    assert type(suppressed).event_type == "NotificationSuppressed"
    assert (suppressed.reason, suppressed.category) == ("frequency_cap", "survey")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wall.app.asgi()), base_url="http://t") as api:
        listed = await api.get(
            "/notifier/v1/tenants/shop/customers/c-cap/suppressions", headers={"Authorization": "Bearer shop-key"}
        )
        assert listed.status_code == 200 and listed.json()[0]["reason"] == "frequency_cap"
        assert (await api.get("/notifier/v1/tenants/shop/customers/c-cap/suppressions")).status_code == 401
        other = await api.get(
            "/notifier/v1/tenants/shop/customers/c-cap/suppressions", headers={"Authorization": "Bearer shop-down-key"}
        )
        assert other.status_code == 403
        prefs = await api.get(
            "/notifier/v1/tenants/shop/customers/c-cap/preferences", headers={"Authorization": "Bearer shop-key"}
        )
        assert prefs.json()["channels"] == ["sms"] and prefs.json()["consents"]["survey"] is True
        missing = await api.get(
            "/notifier/v1/tenants/shop/customers/nobody/preferences", headers={"Authorization": "Bearer shop-key"}
        )
        assert missing.status_code == 404 and "nobody" in missing.json()["detail"]


async def test_contact_budget_suppresses_marketing_first_never_transactional(wall: World) -> None:
    t = now()
    customer = registration("c-budget", t, email="budget@shop.test")
    customer = customer.model_copy(
        update={"consents": retail.Consents(transactional=True, service=True, marketing=True, survey=True)}
    )
    await wall.register("shop", customer)
    tier, milestone = sample("loyalty.TierChanged.v1"), sample("loyalty.TierProgressMilestone.v1")
    sequence = [tier, tier, milestone, tier, tier]  # budget 3 a week, marketing may use only 2 of them
    outcomes = []
    for i, event in enumerate(sequence):
        (env,) = await wall.send("shop", with_customer(event, "c-budget", t + timedelta(seconds=i + 1)))
        (outcome,) = await wall.outcomes(env.id)
        outcomes.append((type(outcome).event_type, getattr(outcome, "reason", None)))
    assert outcomes == [
        ("NotificationDelivered", None),
        ("NotificationDelivered", None),
        ("NotificationSuppressed", "contact_budget"),  # the reserved slot is not marketing's
        ("NotificationDelivered", None),  # ... but service still fits
        ("NotificationSuppressed", "contact_budget"),  # the budget is spent
    ]
    assert len(wall.smtp.to("budget@shop.test")) == 3


async def test_read_api_preview_and_deliveries(wall: World) -> None:
    auth = {"Authorization": "Bearer shop-key"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wall.app.asgi()), base_url="http://t") as api:
        ru = await api.get(
            "/notifier/v1/tenants/shop/preview", params={"event_type": "TierChanged", "locale": "ru"}, headers=auth
        )
        assert ru.status_code == 200 and "Здравствуйте" in ru.json()["text"]
        bad = await api.get(
            "/notifier/v1/tenants/shop/preview", params={"event_type": "Nope", "locale": "en"}, headers=auth
        )
        assert bad.status_code == 422 and "TierChanged" in bad.json()["detail"]
        missing = await api.get("/notifier/v1/tenants/shop/preview", params={"locale": "en"}, headers=auth)
        assert missing.status_code == 422
        listed = await api.get("/notifier/v1/tenants/shop/customers/c-mail/deliveries", headers=auth)
        (row,) = listed.json()
        assert row["status"] == "delivered" and row["channel"] == "email"
        assert "@" not in row["recipient_hash"] and len(row["recipient_hash"]) == 64
        assert (
            "/notifier/v1/tenants/{tenant}/customers/{customer_id}/deliveries"
            in (await api.get("/openapi.json")).json()["paths"]
        )


async def test_unknown_customer_and_no_consent_are_suppressed_with_reasons(wall: World) -> None:
    (tier,) = await wall.send("shop", with_customer(sample("loyalty.TierChanged.v1"), "c-ghost", now()))
    (ghost,) = await wall.outcomes(tier.id)
    assert ghost.reason == "unknown_customer"


async def test_endpoint_disabled_after_repeated_failures_then_reenabled(wall: World) -> None:
    wall.http.failures["hook:crm"] = [500] * 5  # disable_after_failures: 5; retry: 3 retries
    case = sample("loyalty.DetractorCaseOpened.v1")
    (first,) = await wall.send("shop", with_customer(case, "c-off-1", now()))
    (exhausted,) = await wall.outcomes(first.id)
    assert (exhausted.reason, exhausted.attempts) == ("retries_exhausted", 4)
    (second,) = await wall.send("shop", with_customer(case, "c-off-2", now()))
    (refused,) = await wall.outcomes(second.id)
    assert refused.reason == "endpoint_disabled"
    auth = {"Authorization": "Bearer shop-key"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wall.app.asgi()), base_url="http://t") as api:
        (crm,) = (await api.get("/notifier/v1/tenants/shop/webhooks", headers=auth)).json()
        assert crm["disabled"] is True and crm["consecutive_failures"] == 5
        assert (await api.post("/notifier/v1/tenants/shop/webhooks/nope/enable", headers=auth)).status_code == 404
        enabled = await api.post("/notifier/v1/tenants/shop/webhooks/crm/enable", headers=auth)
        assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    (third,) = await wall.send("shop", with_customer(case, "c-off-3", now()))
    (delivered,) = await wall.outcomes(third.id)
    assert type(delivered).event_type == "NotificationDelivered"
    # The partner is fixed: resend the message that finally failed (delivered ones are never resent).
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wall.app.asgi()), base_url="http://t") as api:
        assert (await api.post("/notifier/v1/tenants/shop/deliveries/resend", json={}, headers=auth)).status_code == 422
        resent = await api.post(
            "/notifier/v1/tenants/shop/deliveries/resend",
            json={"notification_ids": [exhausted.notification_id, delivered.notification_id]},
            headers=auth,
        )
        assert resent.json() == {"resent": [exhausted.notification_id]}
    _, redelivered = await wall.outcomes(first.id, n=2)
    assert type(redelivered).event_type == "NotificationDelivered" and redelivered.attempts == 1


async def test_lost_leases_resend_webhooks_but_never_emails(wall: World) -> None:
    """Rows a crashed sender left in 'sending': the webhook goes out again under its webhook-id, the email
    is reported as failed (its outcome is unknown and a second copy cannot be recalled)."""
    body = json.dumps({"type": "loyalty.DetractorCaseOpened.v1", "data": {"customer_id": "c-lease"}})
    rows = [
        ("email", "lease@shop.test", None, {"subject": "s", "text": "t", "html": "h", "sms": "t"}),
        ("webhook", "crm", "crm", {"body": body, "webhook_id": "msg_lease"}),
    ]
    ids = {}
    for channel, recipient, endpoint, content in rows:
        source = str(uuid.uuid4())
        ids[channel] = source
        await wall.sql(
            """
            INSERT INTO deliveries (tenant, customer_id, notification_id, source_event_id, source_event_type, channel,
                                    recipient, endpoint_id, category, template, locale, time_zone, content, status,
                                    due_at, attempts, lease_until, source_time)
            VALUES ('shop', 'c-lease', $1, $2, 'loyalty.DetractorCaseOpened.v1', $3, $4, $5, 'service', 't', 'en',
                    'UTC', $6::jsonb, 'sending', now(), 1, now() - interval '1 second', now())
            """,
            str(uuid.uuid4()),
            source,
            channel,
            recipient,
            endpoint,
            json.dumps(content),
        )
        await wall.sql("SELECT pg_notify('loyalty_notifier_deliveries', '')")
    (email_outcome,) = await wall.outcomes(ids["email"])
    (hook_outcome,) = await wall.outcomes(ids["webhook"])
    assert type(email_outcome).event_type == "NotificationFailed" and "outcome unknown" in email_outcome.detail
    assert type(hook_outcome).event_type == "NotificationDelivered" and hook_outcome.attempts == 2
    assert wall.smtp.to("lease@shop.test") == []
    assert [r.data["id"] for r in wall.http.webhooks].count("msg_lease") == 1


async def test_prune_forgets_only_old_finished_rows(wall: World) -> None:
    rows = [
        ("old-done", "delivered", "40 days"),
        ("old-pending", "pending", "40 days"),
        ("new-done", "delivered", "1 day"),
    ]
    for source, status, age in rows:
        await wall.sql(
            f"""
            INSERT INTO deliveries (tenant, customer_id, notification_id, source_event_id, source_event_type, channel,
                                    recipient, category, template, locale, time_zone, content, status, due_at,
                                    source_time, finished_at)
            VALUES ('shop', 'c-prune', $1, $1, 't', 'email', 'p@shop.test', 'service', 't', 'en', 'UTC', '{{}}', $2,
                    now() + interval '100 days', now(), now() - interval '{age}')
            """,
            source,
            status,
        )
    await wall.sql(
        "INSERT INTO contact_log VALUES ('shop', 'c-prune', 'old-done', 'service', now() - interval '40 days'), "
        "('shop', 'c-prune', 'new-done', 'service', now() - interval '3 days')"
    )
    assert wall.app.sender is not None
    removed = await wall.app.sender.prune()
    assert removed["deliveries"] >= 1 and removed["contact_log"] >= 1
    left = await wall.sql("SELECT source_event_id FROM deliveries WHERE customer_id = 'c-prune' ORDER BY 1")
    assert [r["source_event_id"] for r in left] == ["new-done", "old-pending"]
    contacts = await wall.sql("SELECT source_event_id FROM contact_log WHERE customer_id = 'c-prune'")
    assert [r["source_event_id"] for r in contacts] == ["new-done"]  # inside the 7-day budget window


# ------------------------------------------------------------------------------------------- event clock

NIGHT = datetime(2026, 3, 2, 20, 30, tzinfo=UTC)  # 21:30 in Berlin: inside 21:00-08:00


async def tick(world: World, at: datetime) -> None:
    """Move the tenant's event-time watermark (an event about nobody the notifier writes to)."""
    consent = retail.ConsentChanged(customer_id="c-clock", occurred_at=at, category="marketing", granted=False)
    await world.send("night", consent)

    async def moved() -> bool:
        rows = await world.sql("SELECT watermark FROM tenant_clocks WHERE tenant = 'night'")
        return bool(rows) and rows[0]["watermark"] >= at

    await wait_until(moved, within_s=30)


async def test_quiet_hours_deliver_at_the_window_end(night: World) -> None:
    await night.register("night", registration("c-night", NIGHT - timedelta(hours=2), email="night@shop.test"))
    (tier,) = await night.send("night", with_customer(sample("loyalty.TierChanged.v1"), "c-night", NIGHT))

    async def planned() -> list[asyncpg.Record]:
        return await night.sql("SELECT status, due_at FROM deliveries WHERE source_event_id = $1", tier.id)

    await wait_until(planned, within_s=30)
    (row,) = await planned()
    assert row["status"] == "pending" and row["due_at"] == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)  # 08:00 Berlin
    await tick(night, datetime(2026, 3, 3, 6, 59, tzinfo=UTC))
    await asyncio.sleep(0.5)
    assert night.smtp.to("night@shop.test") == []  # still quiet
    await tick(night, datetime(2026, 3, 3, 7, 0, 1, tzinfo=UTC))
    (delivered,) = await night.outcomes(tier.id)
    assert delivered.channel == "email" and len(night.smtp.to("night@shop.test")) == 1


async def test_consent_withdrawn_during_quiet_hours_wins_over_the_plan(night: World) -> None:
    late = datetime(2026, 3, 20, 20, 30, tzinfo=UTC)  # 21:30 Berlin: deferred to 08:00
    await night.register("night", registration("c-late", late - timedelta(hours=2), email="late@shop.test"))
    (tier,) = await night.send("night", with_customer(sample("loyalty.TierChanged.v1"), "c-late", late))

    async def planned() -> bool:
        return bool(await night.sql("SELECT 1 FROM deliveries WHERE source_event_id = $1", tier.id))

    await wait_until(planned, within_s=30)
    withdrawn = retail.ConsentChanged(
        customer_id="c-late", occurred_at=late + timedelta(minutes=30), category="service", granted=False
    )
    await night.send("night", withdrawn)

    async def applied() -> bool:
        rows = await night.sql(
            "SELECT consents->'service'->>'granted' AS g FROM customers WHERE customer_id = 'c-late'"
        )
        return bool(rows) and rows[0]["g"] == "false"

    await wait_until(applied, within_s=30)  # topics are consumed independently: the tick must come after it
    await tick(night, datetime(2026, 3, 21, 7, 0, 1, tzinfo=UTC))
    (outcome,) = await night.outcomes(tier.id)
    assert type(outcome).event_type == "NotificationSuppressed" and outcome.reason == "no_consent"
    assert night.smtp.to("late@shop.test") == []


async def test_journey_steps_fire_in_event_time_and_at_most_once(night: World) -> None:
    start = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    await night.register("night", registration("c-new", start - timedelta(minutes=5), email="new@shop.test"))
    (purchase,) = await night.send("night", with_customer(sample("loyalty.PurchaseMade.v1"), "c-new", start))
    await wait_until(lambda: len(night.smtp.to("new@shop.test")) >= 1, within_s=30)
    (day0,) = night.smtp.to("new@shop.test")
    body = day0.get_body(("plain",)).get_content()
    assert "first order" in body and "DRILL-18V" in body  # the stored purchase context
    await tick(night, start + timedelta(days=3, minutes=1))
    await wait_until(lambda: len(night.smtp.to("new@shop.test")) >= 2, within_s=30)
    assert "first check" in night.smtp.to("new@shop.test")[1]["Subject"]
    # A redelivered timer (e.g. a crash after sending, before the timer row was deleted) sends nothing.
    await night.sql(
        "INSERT INTO timers (tenant, kind, key, due_at, payload) "
        "VALUES ('night', 'journey-step', 'again', $1, $2::jsonb)",
        start,
        json.dumps(
            {
                "journey": "onboarding",
                "customer_id": "c-new",
                "path": "default",
                "step": "day0_thanks",
                "template": "onboarding_day0",
            }
        ),
    )
    await tick(night, start + timedelta(days=3, minutes=2))

    async def suppressed_again() -> bool:
        return bool(
            await night.sql("SELECT 1 FROM suppressions WHERE customer_id = 'c-new' AND reason = 'step_already_sent'")
        )

    await wait_until(suppressed_again, within_s=30)
    await tick(night, start + timedelta(days=7, minutes=1))
    await wait_until(lambda: len(night.smtp.to("new@shop.test")) >= 3, within_s=30)
    await asyncio.sleep(0.5)
    subjects = [m["Subject"] for m in night.smtp.to("new@shop.test")]
    assert len(subjects) == 3 and len(set(subjects)) == 3, subjects
    steps = await night.sql("SELECT step, outcome FROM journey_steps WHERE customer_id = 'c-new' ORDER BY step")
    assert [(r["step"], r["outcome"]) for r in steps] == [
        ("day0_thanks", "planned"),
        ("day7_beginner_answers", "planned"),
        ("first_tool_check", "planned"),
    ]
    assert purchase.id  # the journey's source event


async def test_journey_branches_on_a_later_purchase_and_skips_the_old_path(night: World) -> None:
    start = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    await night.register("night", registration("c-branch", start - timedelta(minutes=5), email="branch@shop.test"))
    first = with_customer(sample("loyalty.PurchaseMade.v1"), "c-branch", start)
    first = first.model_copy(update={"lines": [first.lines[0].model_copy(update={"category": "paint"})]})
    await night.send("night", first)
    await wait_until(lambda: len(night.smtp.to("branch@shop.test")) >= 1, within_s=30)
    again = with_customer(sample("loyalty.PurchaseMade.v1"), "c-branch", start + timedelta(days=1))
    again = again.model_copy(
        update={"order_id": "order-2", "lines": [again.lines[1].model_copy(update={"category": "drill_bits"})]}
    )
    await night.send("night", again)
    await wait_until(lambda: len(night.smtp.to("branch@shop.test")) >= 2, within_s=30)
    assert "active makers" in night.smtp.to("branch@shop.test")[1]["Subject"]
    await tick(night, start + timedelta(days=7, minutes=1))

    async def skipped() -> bool:
        rows = await night.sql(
            "SELECT 1 FROM suppressions WHERE customer_id = 'c-branch' AND reason = 'journey_path_changed'"
        )
        return bool(rows)

    await wait_until(skipped, within_s=30)  # day 7 of the default path is not for active makers
    await asyncio.sleep(0.5)
    assert len(night.smtp.to("branch@shop.test")) == 2
    (state,) = await night.sql("SELECT path FROM journeys WHERE customer_id = 'c-branch'")
    assert state["path"] == "active_makers"

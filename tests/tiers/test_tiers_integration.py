"""Tiers over real Kafka + Postgres: events in → TierChanged out, redelivery, downgrade timers, API, recalc."""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from loyalty_contracts.base import Event, Money
from loyalty_contracts.catalogue import topic_for
from loyalty_contracts.envelope import Envelope, decode
from loyalty_contracts.events.retail import (
    PurchaseLine,
    PurchaseMade,
    PurchaseRefunded,
    ReviewLeft,
    SurveyAnswered,
)
from loyalty_contracts.events.tiers import TierChanged, TierDowngradeScheduled, TierProgressMilestone
from loyalty_kit.settings import ServiceSettings
from loyalty_kit.testing import (
    TopicReader,
    fresh_database,
    http_client,
    isolated_settings,
    publish,
    running,
    wait_until,
)
from loyalty_tiers.app import build_app
from loyalty_tiers.recalc import RecalculationError, recalculate
from tiers_factories import BASE_PROGRAM, T0

pytestmark = pytest.mark.integration

TENANT = "t-tiers"
OTHER = "t-other"
KEY = "tiers-test-key"
OTHER_KEY = "other-test-key"
OUT_TYPES = [TierChanged.ce_type(), TierProgressMilestone.ce_type(), TierDowngradeScheduled.ce_type()]


def write_programs(directory: Path, tiers: dict[str, Any]) -> None:
    for tenant, key in ((TENANT, KEY), (OTHER, OTHER_KEY)):
        header = {
            "tenant": tenant, "display_name": tenant, "default_locale": "en", "locales": ["en", "ru"],
            "timezone": "UTC", "currency": "EUR",
            "api_keys": [{"name": "test", "sha256": hashlib.sha256(key.encode()).hexdigest()}],
        }
        (directory / f"{tenant}.yaml").write_text(yaml.safe_dump({**header, "tiers": tiers}, allow_unicode=True))


@dataclass
class Env:
    settings: ServiceSettings
    dsn: str
    programs: Path
    bootstrap: str

    def topic(self, ce_type: str) -> str:
        return self.settings.topic_prefix + topic_for(ce_type)


@pytest.fixture
async def env(kafka_bootstrap: str, pg_admin_dsn: str, tmp_path: Path) -> AsyncIterator[Env]:
    programs = tmp_path / "programs"
    programs.mkdir()
    write_programs(programs, BASE_PROGRAM)
    async with fresh_database(pg_admin_dsn, prefix="tiers_") as dsn:
        suffix = uuid.uuid4().hex[:8]
        # The fresh database's superuser DSN with schema "tiers": no cluster-wide role is touched.
        settings = isolated_settings("tiers", kafka_bootstrap, dsn, suffix, programs_dir=programs,
                                     timer_clock="event")
        yield Env(settings, dsn, programs, kafka_bootstrap)


def envelope(data: Event, tenant: str = TENANT) -> Envelope:
    return Envelope.new(data, tenant=tenant, source="/test/retailer")


def purchase(customer: str, when: datetime, order_id: str, euros: int, category: str = "tools") -> Envelope:
    line = PurchaseLine(line_id="l1", sku="sku-1", category=category, quantity=1,
                        unit_price=Money(amount_minor=euros * 100, currency="EUR"))
    return envelope(PurchaseMade(customer_id=customer, occurred_at=when, order_id=order_id, store_id="s1",
                                 sales_channel="web", lines=[line],
                                 total=Money(amount_minor=euros * 100, currency="EUR")))


def survey(customer: str, when: datetime, request_id: str) -> Envelope:
    return envelope(SurveyAnswered(customer_id=customer, occurred_at=when, survey_id="nps", request_id=request_id,
                                   score=9, answer_channel="web"))


def decoded(records: list[Any]) -> list[Envelope]:
    return [decode(r.key, r.value, r.headers) for r in records]


async def ledger_points(dsn: str, customer: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT coalesce(sum(points), 0) FROM (SELECT DISTINCT ON (entry_id) points FROM tiers.ledger "
            "WHERE customer_id = $1 ORDER BY entry_id, revision DESC) x", customer)
    finally:
        await conn.close()


async def test_events_in_tier_changed_out_redelivery_no_double_points_and_api(env: Env) -> None:
    app, _ = build_app(env.settings)
    events = [
        purchase("c1", T0, "o1", 80),                              # 80 points: 80 % milestone towards maker
        envelope(ReviewLeft(customer_id="c1", occurred_at=T0 + timedelta(hours=1), review_id="rv1", sku="drill",
                            category="tools", rating=2, text_length=250, has_photo=True)),  # +50 → 130: maker
        purchase("c2", T0, "o2", 20),
        envelope(PurchaseRefunded(customer_id="c2", occurred_at=T0 + timedelta(days=1), order_id="o2",
                                  refund_id="rf2", full=True, lines=[],
                                  amount=Money(amount_minor=2000, currency="EUR"))),
    ]
    topics = [env.topic(t) for t in OUT_TYPES]
    async with running(app), TopicReader(env.bootstrap, *topics) as out:
        # The purchase alone first: 80 of 100 points crosses the 50 % and 80 % milestones towards maker.
        await publish(env.bootstrap, [events[0], events[2], events[3]], topic_prefix=env.settings.topic_prefix)
        reached = await out.wait_for(2, where=lambda r: r.topic == env.topic(TierProgressMilestone.ce_type()))
        milestones = [e.data for e in decoded(reached) if isinstance(e.data, TierProgressMilestone)]
        assert sorted((m.customer_id, m.tier, m.next_tier, m.fraction, m.points, m.points_needed)
                      for m in milestones) == [("c1", "novice", "maker", 0.5, 80, 20),
                                               ("c1", "novice", "maker", 0.8, 80, 20)]
        assert milestones[0].next_tier_names["ru"] == "Мастер"
        await publish(env.bootstrap, [events[1]], topic_prefix=env.settings.topic_prefix)
        changed = await out.wait_for(1, where=lambda r: r.topic == env.topic(TierChanged.ce_type()))
        [tier_changed] = decoded(changed)
        data = tier_changed.data
        assert isinstance(data, TierChanged)
        assert (data.customer_id, data.from_tier, data.to_tier, data.direction, data.reason, data.points) == (
            "c1", "novice", "maker", "up", "threshold_reached", 130)
        assert data.effective_at == T0 + timedelta(hours=1)
        assert data.to_tier_names == {"en": "Maker", "ru": "Мастер"}
        assert [(p.perk_id, p.names["ru"], p.descriptions["en"]) for p in data.perks] == [
            ("early", "Ранний доступ", "48 h early")]
        assert tier_changed.tenant == TENANT
        # The TierChanged continues the trace of the review that caused it.
        assert tier_changed.traceparent is not None
        await wait_until(lambda: _at_least(env.dsn, "SELECT count(*) FROM tiers.ledger", len(events)), within_s=30)
        assert await ledger_points(env.dsn, "c1") == 130
        assert await ledger_points(env.dsn, "c2") == 0  # purchase and its full refund

        # Redelivery of the very same envelopes: no new points, no new events.
        before = len(out.records)
        await publish(env.bootstrap, events, topic_prefix=env.settings.topic_prefix)
        await wait_until(lambda: app.metrics.duplicates._value.get() >= len(events), within_s=30)
        assert await ledger_points(env.dsn, "c1") == 130
        assert len(out.records) == before

        async with http_client(app) as http:
            auth = {"Authorization": f"Bearer {KEY}"}
            base = f"/tiers/v1/tenants/{TENANT}"
            status = (await http.get(f"{base}/customers/c1/status?locale=ru", headers=auth))
            assert status.status_code == 200, status.text
            body = status.json()
            assert (body["tier"]["id"], body["tier"]["name"], body["points"]) == ("maker", "Мастер", 130)
            assert (body["next_tier"]["id"], body["points_needed"]) == ("expert", 170)
            assert body["actions"][0]["code"] == "spend"  # 170 points: one purchase of 170 EUR closes it
            assert body["actions"][0]["label"] == "Совершите покупки на 170.00 EUR"
            assert any(a["code"] == "review_with_photo" and a["points"] == 50 for a in body["actions"])
            assert body["scheduled_downgrade"] is None
            ledger = (await http.get(f"{base}/customers/c2/ledger", headers=auth)).json()
            assert sorted(e["points"] for e in ledger["entries"]) == [-20, 20]
            assert any("full refund" in e["rule"] for e in ledger["entries"])
            history = (await http.get(f"{base}/customers/c1/history", headers=auth)).json()
            assert [(h["from_tier"], h["to_tier"], h["reason"]) for h in history] == [
                ("novice", "maker", "threshold_reached")]
            distribution = (await http.get(f"{base}/distribution", headers=auth)).json()
            assert distribution["tiers"] == {"novice": 1, "maker": 1, "expert": 0, "guru": 0}
            # Bad requests get 4xx with reasons.
            missing = await http.get(f"{base}/customers/c1/status")
            assert missing.status_code == 401 and "Authorization" in missing.json()["detail"]
            foreign = await http.get(f"{base}/customers/c1/status",
                                     headers={"Authorization": f"Bearer {OTHER_KEY}"})
            assert foreign.status_code == 403
            unknown = await http.get(f"{base}/customers/nobody/status", headers=auth)
            assert unknown.status_code == 404 and "nobody" in unknown.json()["detail"]
            bad_limit = await http.get(f"{base}/customers/c1/history?limit=0", headers=auth)
            assert bad_limit.status_code == 422
            openapi = (await http.get("/openapi.json")).json()
            assert "/tiers/v1/tenants/{tenant}/customers/{customer_id}/status" in openapi["paths"]
            # The dashboards' tier-change series: one change into maker (redelivery counted nothing).
            metrics = (await http.get("/metrics")).text
            assert f'loyalty_tier_changes_total{{tenant="{TENANT}",to_tier="maker"}} 1.0' in metrics
            assert 'to_tier="expert"' not in metrics


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _at_least(dsn: str, sql: str, n: int) -> bool:
    return await _count(dsn, sql) >= n


async def test_downgrade_timer_notifies_in_advance_then_downgrades(env: Env) -> None:
    app, _ = build_app(env.settings)
    topics = [env.topic(t) for t in OUT_TYPES]
    prefix = env.settings.topic_prefix

    def of(records: list[Any], kind: type[Event]) -> list[Any]:
        return [e.data for e in decoded(records) if isinstance(e.data, kind)]

    async with running(app), TopicReader(env.bootstrap, *topics) as out:
        await publish(env.bootstrap, [purchase("c3", T0, "o3", 350)], topic_prefix=prefix)  # expert
        await out.wait_for(1, where=lambda r: r.topic == env.topic(TierChanged.ce_type()))
        # Points expire at day 365 (rolling window); grace 30 days; notice 10 days before (day 385).
        # With timer_clock=event, other customers' events move the tenant's clock forward.
        await publish(env.bootstrap, [survey("clock", T0 + timedelta(days=386), "rq-a")], topic_prefix=prefix)
        notices = await out.wait_for(
            1, where=lambda r: r.topic == env.topic(TierDowngradeScheduled.ce_type()), within_s=30)
        [notice] = of(notices, TierDowngradeScheduled)
        assert (notice.customer_id, notice.from_tier, notice.to_tier, notice.points_needed) == (
            "c3", "expert", "maker", 300)
        assert notice.effective_at == T0 + timedelta(days=395)
        assert of(out.records, TierChanged)[-1].to_tier == "expert"  # not yet downgraded

        async with http_client(app) as http:
            body = (await http.get(f"/tiers/v1/tenants/{TENANT}/customers/c3/status",
                                   headers={"Authorization": f"Bearer {KEY}"})).json()
            assert body["tier"]["id"] == "expert"
            assert body["scheduled_downgrade"]["to_tier"] == "maker"
            assert body["scheduled_downgrade"]["effective_at"].startswith("2027-03-31")

        await publish(env.bootstrap, [survey("clock", T0 + timedelta(days=396), "rq-b")], topic_prefix=prefix)
        await out.wait_for(2, where=lambda r: r.topic == env.topic(TierChanged.ce_type()), within_s=30)
        down = of(out.records, TierChanged)[-1]
        assert (down.from_tier, down.to_tier, down.direction, down.reason) == ("expert", "maker", "down",
                                                                               "grace_expired")
        assert down.effective_at == T0 + timedelta(days=395)
        assert len(of(out.records, TierDowngradeScheduled)) == 1  # notified once


async def test_recalculation_emits_only_changes(env: Env) -> None:
    app, _ = build_app(env.settings)
    prefix = env.settings.topic_prefix
    topics = [env.topic(t) for t in OUT_TYPES]
    async with running(app), TopicReader(env.bootstrap, *topics) as out:
        await publish(env.bootstrap, [purchase("r1", T0, "o-r1", 350), purchase("r2", T0, "o-r2", 120),
                                      purchase("r3", T0, "o-r3", 10)], topic_prefix=prefix)
        await out.wait_for(2, where=lambda r: r.topic == env.topic(TierChanged.ce_type()))
        await wait_until(lambda: _at_least(env.dsn, "SELECT count(*) FROM tiers.customers", 3), within_s=30)

        same = await recalculate(TENANT, 1, settings=env.settings, force=True)
        assert (same.customers, same.tier_changes, same.downgrade_notices) == (3, 0, 0)

        # Version 2 raises maker to 150 and drops grace: r2 (120 points) goes back to novice, r1 stays expert.
        v2 = copy.deepcopy(BASE_PROGRAM)
        v2["version"] = 2
        v2["ladder"][1]["threshold"] = 150
        v2["downgrade"] = {"policy": "to_supported", "recalculation": "immediate"}
        write_programs(env.programs, v2)
        report = await recalculate(TENANT, 2, settings=env.settings)
        assert (report.customers, report.tier_changes) == (3, 1)
        changes = await out.wait_for(3, where=lambda r: r.topic == env.topic(TierChanged.ce_type()), within_s=30)
        last = decoded(changes)[-1].data
        assert isinstance(last, TierChanged)
        assert (last.customer_id, last.from_tier, last.to_tier, last.reason, last.program_version) == (
            "r2", "maker", "novice", "program_changed", 2)
        again = await recalculate(TENANT, 2, settings=env.settings)
        assert again.customers == 0  # everyone is on version 2 already
        with pytest.raises(RecalculationError, match=r"tiers\.version is 2, not 3"):
            await recalculate(TENANT, 3, settings=env.settings)

        # This process still runs version 1: it must not silently undo the recalculation for r2.
        async with TopicReader(env.bootstrap, app.dlq_topic) as dlq:
            await publish(env.bootstrap, [purchase("r2", T0 + timedelta(days=1), "o-r2b", 5)], topic_prefix=prefix)
            [dead] = await dlq.wait_for(1, within_s=30)
        headers = dict(dead.headers)
        assert headers["dlq_reason"] == b"handler_failed"
        assert b"StaleProgramVersion" in headers["dlq_error"] and b"version 2" in headers["dlq_error"]


async def test_refund_before_its_purchase_becomes_a_new_ledger_revision(env: Env) -> None:
    app, _ = build_app(env.settings)
    prefix = env.settings.topic_prefix
    refund_first = envelope(PurchaseRefunded(customer_id="c9", occurred_at=T0 + timedelta(days=2), order_id="o9",
                                             refund_id="rf9", full=True, lines=[],
                                             amount=Money(amount_minor=5000, currency="EUR")))
    async with running(app):
        await publish(env.bootstrap, [refund_first], topic_prefix=prefix)
        await wait_until(lambda: _at_least(env.dsn, "SELECT count(*) FROM tiers.ledger", 1), within_s=30)
        await publish(env.bootstrap, [purchase("c9", T0, "o9", 50)], topic_prefix=prefix)
        await wait_until(lambda: _at_least(env.dsn, "SELECT count(*) FROM tiers.ledger", 3), within_s=30)
    conn = await asyncpg.connect(env.dsn)
    try:
        rows = await conn.fetch("SELECT entry_id, revision, points, rule FROM tiers.ledger WHERE customer_id = 'c9' "
                                "ORDER BY recorded_at, revision")
    finally:
        await conn.close()
    refund_rows = [(r["revision"], r["points"]) for r in rows if r["entry_id"] == refund_first.id]
    assert refund_rows == [(1, 0), (2, -50)]  # appended, never updated
    latest = {r["entry_id"]: r["points"] for r in rows}  # rows are in revision order
    assert sum(latest.values()) == 0  # the purchase's 50 and the refund's -50


async def test_migrations_keep_existing_facts_and_ledger(pg_admin_dsn: str,
                                                                                 tmp_path: Path) -> None:
    from loyalty_kit import migrations
    from loyalty_kit.db import create_pool
    from loyalty_tiers import store
    from loyalty_tiers.app import MIGRATIONS_DIR

    only_first = tmp_path / "m"
    only_first.mkdir()
    (only_first / "0001_tiers.sql").write_text((MIGRATIONS_DIR / "0001_tiers.sql").read_text())
    async with fresh_database(pg_admin_dsn, prefix="tiers_mig_") as dsn:
        pool = await create_pool(dsn, "tiers", min_size=1, max_size=1)
        try:
            await migrations.apply(pool, "tiers", only_first)
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO customers (tenant, customer_id, program_version, tier, reason, points, as_of) "
                    "VALUES ('t', 'c', 1, 'maker', 'threshold_reached', 120, $1)", T0)
                body = ('{"fact": "survey", "event_id": "e1", "occurred_at": "2026-03-02T10:30:00+00:00", '
                        '"request_id": "rq"}')
                await conn.execute(
                    "INSERT INTO facts (tenant, customer_id, event_id, kind, occurred_at, body) "
                    "VALUES ('t', 'c', 'e1', 'survey', $1, $2::jsonb)", T0, body)
                for revision, points in ((1, 0), (2, 5)):
                    await conn.execute(
                        "INSERT INTO ledger (tenant, customer_id, program_version, entry_id, revision, activity, "
                        "points, counts_from, expires_at, rule, ref) VALUES ('t', 'c', 1, 'e1', $1, 'survey', $2, "
                        "$3, $4, 'r', 'rq')", revision, points, T0, T0 + timedelta(days=365))
            await migrations.apply(pool, "tiers", MIGRATIONS_DIR)
            async with pool.acquire() as conn:
                row = await store.load_customer(conn, "t", "c")
                facts = await store.load_facts(conn, "t", ["c"])
                keys = await store.load_entry_keys(conn, "t", 1, ["c"])
        finally:
            await pool.close()
    # 0002 folded the facts into the status document, 0004 moved them out to the append-only facts table;
    # the document has no derivation, so the customer's next event takes the full re-derivation.
    assert row is not None and row.derivation is None
    assert [f.event_id for f in facts["c"]] == ["e1"]
    assert keys == {"c": {"e1": (2, 5, store.micros(T0), store.micros(T0 + timedelta(days=365)))}}


"""End to end over real Kafka + Postgres: events in → referral result events out.

invite → register → purchase → hold → grant; refund after the grant → revoke; refund inside the window →
rejection; redelivery of every input → nothing twice; the read API over the same state.
Timers run on the event-time clock so the return window passes when a later event arrives.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from loyalty_contracts.catalogue import topics_produced_by
from loyalty_contracts.envelope import Envelope, decode
from loyalty_kit import ServiceApp
from loyalty_kit.dlq import list_dead_letters
from loyalty_kit.testing import (
    TopicReader,
    fresh_database,
    http_client,
    isolated_settings,
    publish,
    running,
    wait_until,
)
from loyalty_kit.topics import ensure_topics
from loyalty_referrals.app import build
from loyalty_referrals.domain import REPORT_PERIOD, derive_code
from loyalty_referrals.gap import GAP_METRIC
from prometheus_client.parser import text_string_to_metric_families
from referrals_events import feedback, invited, purchased, refunded, registered

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
SECRET = "integration-secret-0123456789abcdef"
PROGRAMS = Path(__file__).resolve().parents[2] / "programs"
AUTH = {"Authorization": "Bearer acme-demo-key"}


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


@pytest.fixture
def service_name(unique_suffix: str) -> str:
    """A unique schema/role name per test: roles are cluster-wide, and other runs may use 'referrals'."""
    return f"rf_{unique_suffix}"


@pytest.fixture
async def referrals_db(pg_admin_dsn: str, service_name: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, prefix="ref_") as dsn:
        yield dsn
    conn = await asyncpg.connect(pg_admin_dsn)
    try:
        await conn.execute(f'DROP ROLE IF EXISTS "{service_name}"')
    finally:
        await conn.close()


@pytest.fixture
async def app(
    kafka_bootstrap: str, referrals_db: str, tmp_path: Path, unique_suffix: str, service_name: str
) -> ServiceApp:
    programs = tmp_path / "programs"
    programs.mkdir()
    shutil.copy(PROGRAMS / "acme-diy.yaml", programs / "acme-diy.yaml")
    settings = isolated_settings(
        service_name,
        kafka_bootstrap,
        referrals_db,
        unique_suffix,
        pg_admin_dsn=referrals_db,
        programs_dir=programs,
        timer_clock="event",
    )
    # The service name is not the catalogue's, so create the output topics the way the real service would.
    await ensure_topics(
        kafka_bootstrap,
        [settings.topic_prefix + t for t in topics_produced_by("referrals")],
        prefix=settings.topic_prefix,
        partitions=settings.topic_partitions,
    )
    # The gap gauge refreshes fast here so tests see a change within a second, not the default 30 s.
    return build(settings, environ={"ACME_DIY_REFERRAL_SECRET": SECRET}, gap_refresh_s=0.2)


class Output:
    def __init__(self, reader: TopicReader) -> None:
        self.reader = reader

    def events(self) -> list[Envelope]:
        return [decode(r.key, r.value, r.headers) for r in self.reader.records]

    def of(self, event_type: str) -> list[Any]:
        return [e.data for e in self.events() if e.data.event_type == event_type]

    async def wait(self, event_type: str, count: int, within_s: float = 45.0) -> list[Any]:
        await self.reader.wait_for(
            count, within_s=within_s, where=lambda r: dict(r.headers)["ce_type"] == f"loyalty.{event_type}.v1".encode()
        )
        return self.of(event_type)


def code(customer_id: str) -> str:
    return derive_code(SECRET.encode(), "acme-diy", customer_id)


async def table_counts(app: ServiceApp) -> dict[str, int]:
    assert app.pool is not None
    out = {}
    for table in ("customers", "invitations", "claims", "referrals", "rejections", "codes"):
        out[table] = await app.pool.fetchval(f"SELECT count(*) FROM {table}")
    out["rewards_granted"] = await app.pool.fetchval(
        "SELECT count(*) FROM referrals, jsonb_each(rewards) r WHERE r.value->>'status' IN ('granted', 'revoked')"
    )
    return out


async def test_invite_register_purchase_hold_grant_refund_revoke_and_redelivery(
    app: ServiceApp, kafka_bootstrap: str
) -> None:
    prefix = app.settings.topic_prefix
    outputs = [prefix + t for t in topics_produced_by("referrals")]
    # Phases follow real life: a referrer has a code before friends can use it; a refund follows its order.
    phase1 = [registered("alice", day(0)), feedback("alice", day(0.5), 10, "fb-1")]
    phase2 = [
        invited("alice", "bob", day(1), "inv-1"),
        registered("bob", day(2)),
        purchased("bob", "o-bob-1", day(3), 5000),
        registered("carol", day(4), code=code("alice")),  # code at registration
        purchased("carol", "o-carol-1", day(5), 4000),
    ]
    phase3 = [refunded("carol", "o-carol-1", day(6), 4000)]  # inside carol's return window
    inputs = [*phase1, *phase2, *phase3]
    async with running(app), TopicReader(kafka_bootstrap, *outputs) as reader:
        out = Output(reader)
        await publish(kafka_bootstrap, phase1, topic_prefix=prefix)
        await out.wait("ReferralCodeIssued", 1)
        await publish(kafka_bootstrap, phase2, topic_prefix=prefix)
        issued = await out.wait("ReferralCodeIssued", 3)
        assert {e.customer_id: e.code for e in issued} == {c: code(c) for c in ("alice", "bob", "carol")}
        assert issued[0].share_link == f"https://www.acme-diy.example/invite/{issued[0].code}"
        converted = await out.wait("ReferralConverted", 2)
        assert {(c.referrer_id, c.referee_id, c.order_id) for c in converted} == {
            ("alice", "bob", "o-bob-1"),
            ("alice", "carol", "o-carol-1"),
        }
        await publish(kafka_bootstrap, phase3, topic_prefix=prefix)
        rejected = await out.wait("ReferralRejected", 1)
        assert [(r.customer_id, r.reason, r.referrer_id) for r in rejected] == [
            ("carol", "first_order_refunded", "alice")
        ]
        assert out.of("ReferralRewardGranted") == []  # still inside the 30-day hold

        # A later event moves the tenant's event-time clock past bob's hold (day 3 + 30): rewards are granted.
        later = registered("dave", day(40))
        await publish(kafka_bootstrap, [later], topic_prefix=prefix)
        granted = await out.wait("ReferralRewardGranted", 2)
        assert sorted(
            (g.customer_id, g.beneficiary_role, g.kind, g.points, g.coupon_value and g.coupon_value.amount_minor)
            for g in granted
        ) == [
            ("alice", "referrer", "points", 500, None),
            ("bob", "referee", "coupon", None, 1000),
        ]
        assert all(g.occurred_at == day(33) for g in granted)

        # Full refund after the grant: the referrer's points are revoked (policy), the friend keeps the coupon.
        refund_after_grant = refunded("bob", "o-bob-1", day(41))
        await publish(kafka_bootstrap, [refund_after_grant], topic_prefix=prefix)
        revoked = await out.wait("ReferralRewardRevoked", 1)
        assert [(r.customer_id, r.kind, r.points, r.reason) for r in revoked] == [
            ("alice", "points", 500, "first_order_refunded")
        ]
        assert revoked[0].reward_id == next(g.reward_id for g in granted if g.customer_id == "alice")

        # Redeliver every input (same ids): nothing is applied or emitted twice.
        before = await table_counts(app)
        seen = len(reader.records)
        every_input = [*inputs, later, refund_after_grant]
        await publish(kafka_bootstrap, every_input, topic_prefix=prefix)
        await _wait_for_duplicates(app, len(every_input))
        assert await table_counts(app) == before
        assert len(reader.records) == seen
        assert before["rewards_granted"] == 2 and before["referrals"] == 2

        # The read API sees the same state.
        async with http_client(app) as http:
            mine = (await http.get("/referrals/v1/tenants/acme-diy/customers/alice/referrals", headers=AUTH)).json()
            statuses = {r["referee_id"]: r["status"] for r in mine["as_referrer"]}
            assert statuses == {"bob": "revoked", "carol": "rejected"}
            code_out = (await http.get("/referrals/v1/tenants/acme-diy/customers/bob/code", headers=AUTH)).json()
            assert code_out["code"] == code("bob")
            period = {"since": day(0).isoformat(), "until": day(60).isoformat()}
            funnel = (await http.get("/referrals/v1/tenants/acme-diy/funnel", params=period, headers=AUTH)).json()
            assert funnel["counts"] == {"invited": 1, "registered": 2, "first_purchase": 1, "rewarded": 1, "revoked": 1}
            assert funnel["median_days_to_convert"] == 1.0
            reasons = (await http.get("/referrals/v1/tenants/acme-diy/rejections", params=period, headers=AUTH)).json()
            assert reasons["reasons"] == [{"reason": "first_order_refunded", "fraud": False, "count": 1}]
            assert reasons["unresolved_codes"] == 0
            top = (await http.get("/referrals/v1/tenants/acme-diy/top-referrers", params=period, headers=AUTH)).json()
            assert top == [{"referrer_id": "alice", "conversions": 1, "rewarded": 1}]  # carol's was rejected
            gap = (await http.get("/referrals/v1/tenants/acme-diy/says-vs-does", params=period, headers=AUTH)).json()
            assert (gap["respondents"], gap["promoters"], gap["promoters_who_referred"]) == (1, 1, 1)
            assert gap["customers"] == 4 and gap["customers_who_referred"] == 1
        assert await list_dead_letters(kafka_bootstrap, app.name, topic_prefix=prefix) == []


async def _wait_for_duplicates(app: ServiceApp, count: int) -> None:
    await wait_until(lambda: app.metrics.duplicates._value.get() >= count, within_s=45)


async def test_api_refuses_bad_requests_with_reasons(app: ServiceApp) -> None:
    async with running(app), http_client(app) as http:
        missing = await http.get("/referrals/v1/tenants/acme-diy/funnel")
        assert missing.status_code == 401 and "Authorization" in missing.json()["detail"]
        wrong = await http.get("/referrals/v1/tenants/other/funnel", headers=AUTH)
        assert wrong.status_code == 403 and "another tenant" in wrong.json()["detail"]
        backwards = await http.get(
            "/referrals/v1/tenants/acme-diy/funnel",
            headers=AUTH,
            params={"since": day(5).isoformat(), "until": day(1).isoformat()},
        )
        assert backwards.status_code == 400 and backwards.json()["detail"] == "since must be before until"
        naive = await http.get(
            "/referrals/v1/tenants/acme-diy/funnel", headers=AUTH, params={"since": "2026-03-01T00:00:00"}
        )
        assert naive.status_code == 400 and "UTC offset" in naive.json()["detail"]
        limit = await http.get("/referrals/v1/tenants/acme-diy/top-referrers", headers=AUTH, params={"limit": 0})
        assert limit.status_code == 422 and "limit" in str(limit.json()["detail"])
        unknown = await http.get("/referrals/v1/tenants/acme-diy/customers/nobody/code", headers=AUTH)
        assert unknown.status_code == 404 and "no referral code" in unknown.json()["detail"]
        review = await http.post(
            "/referrals/v1/tenants/acme-diy/reviews/nope", headers=AUTH, json={"decision": "approve", "staff": "s1"}
        )
        assert review.status_code == 404 and "not known" in review.json()["detail"]
        bad_body = await http.post(
            "/referrals/v1/tenants/acme-diy/reviews/nope", headers=AUTH, json={"decision": "maybe"}
        )
        assert bad_body.status_code == 422
        spec = (await http.get("/openapi.json")).json()
        assert spec["paths"]["/referrals/v1/tenants/{tenant}/funnel"]["get"]["responses"]["200"]
        assert "/referrals/v1/tenants/{tenant}/says-vs-does" in spec["paths"]


async def test_review_queue_approval_and_vanity_codes_over_the_api(app: ServiceApp, kafka_bootstrap: str) -> None:
    """Same shipping address as the referrer is a reviewable signal in the example program: staff approve it."""
    prefix = app.settings.topic_prefix
    outputs = [prefix + t for t in topics_produced_by("referrals")]
    async with running(app), TopicReader(kafka_bootstrap, *outputs) as reader, http_client(app) as http:
        out = Output(reader)
        await publish(
            kafka_bootstrap,
            [registered("erin", day(0)), purchased("erin", "o-erin", day(0.5), address="same-flat")],
            topic_prefix=prefix,
        )
        await out.wait("ReferralCodeIssued", 1)
        await publish(
            kafka_bootstrap,
            [registered("finn", day(1), code=code("erin")), purchased("finn", "o-finn", day(2), address="same-flat")],
            topic_prefix=prefix,
        )
        await out.wait("ReferralCodeIssued", 2)

        async def queue() -> list[dict[str, Any]]:
            return (await http.get("/referrals/v1/tenants/acme-diy/reviews", headers=AUTH)).json()

        await wait_until(lambda: _nonempty(queue), within_s=30)
        held = await queue()
        assert [(r["referee_id"], r["status"], r["reason"]) for r in held] == [
            ("finn", "in_review", "same_shipping_address")
        ]
        assert out.of("ReferralConverted") == []  # nothing happens until staff decide
        approved = await http.post(
            f"/referrals/v1/tenants/acme-diy/reviews/{held[0]['referral_id']}",
            headers=AUTH,
            json={"decision": "approve", "staff": "staff-7"},
        )
        assert approved.status_code == 200 and approved.json()["status"] == "held"
        converted = await out.wait("ReferralConverted", 1)
        assert (converted[0].referrer_id, converted[0].referee_id) == ("erin", "finn")
        again = await http.post(
            f"/referrals/v1/tenants/acme-diy/reviews/{held[0]['referral_id']}",
            headers=AUTH,
            json={"decision": "reject", "staff": "staff-7"},
        )
        assert again.status_code == 409 and "not in review" in again.json()["detail"]

        # Vanity codes: unique per tenant, announced, and usable by friends.
        mine = await http.put(
            "/referrals/v1/tenants/acme-diy/customers/erin/vanity-code", headers=AUTH, json={"code": "erin-builds"}
        )
        assert mine.status_code == 200 and mine.json()["vanity_code"] == "ERINBUILDS"
        taken = await http.put(
            "/referrals/v1/tenants/acme-diy/customers/finn/vanity-code", headers=AUTH, json={"code": "ERIN BUILDS"}
        )
        assert taken.status_code == 409 and "already taken" in taken.json()["detail"]
        short = await http.put(
            "/referrals/v1/tenants/acme-diy/customers/finn/vanity-code", headers=AUTH, json={"code": "x"}
        )
        assert short.status_code == 400 and "4 to 20" in short.json()["detail"]
        vanity_issued = await out.wait("ReferralCodeIssued", 3)
        assert [e.code for e in vanity_issued if e.vanity] == ["ERINBUILDS"]
        await publish(
            kafka_bootstrap,
            [registered("gus", day(3), code="erin-builds"), purchased("gus", "o-gus", day(4))],
            topic_prefix=prefix,
        )
        converted = await out.wait("ReferralConverted", 2)
        assert ("erin", "gus") in {(c.referrer_id, c.referee_id) for c in converted}
        assert await list_dead_letters(kafka_bootstrap, app.name, topic_prefix=prefix) == []


async def _nonempty(fetch: Any) -> bool:
    return bool(await fetch())


async def test_code_consumed_before_its_owner_registration_still_attributes(
    app: ServiceApp, kafka_bootstrap: str
) -> None:
    """A replay or a lagging partition delivers the friend's registration (with the code) first."""
    prefix = app.settings.topic_prefix
    outputs = [prefix + t for t in topics_produced_by("referrals")]
    async with running(app), TopicReader(kafka_bootstrap, *outputs) as reader:
        out = Output(reader)
        await publish(kafka_bootstrap, [registered("hana", day(2), code=code("ivan"))], topic_prefix=prefix)
        await out.wait("ReferralCodeIssued", 1)
        assert app.pool is not None
        assert await app.pool.fetchval("SELECT count(*) FROM pending_codes") == 1
        await publish(kafka_bootstrap, [registered("ivan", day(0))], topic_prefix=prefix)  # registered earlier
        await out.wait("ReferralCodeIssued", 2)
        assert await app.pool.fetchval("SELECT count(*) FROM pending_codes") == 0
        await publish(kafka_bootstrap, [purchased("hana", "o-hana", day(3))], topic_prefix=prefix)
        converted = await out.wait("ReferralConverted", 1)
        assert (converted[0].referrer_id, converted[0].referee_id) == ("ivan", "hana")
        assert out.of("ReferralRejected") == []


async def exported_gaps(http: Any) -> dict[str, float]:
    """`loyalty_referrals_recommendation_gap` samples by tenant, as a scraper reads them from /metrics."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    return {
        sample.labels["tenant"]: sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == GAP_METRIC
        for sample in family.samples
    }


async def test_recommendation_gap_gauge_follows_feedback_conversions_and_refunds(
    app: ServiceApp, kafka_bootstrap: str
) -> None:
    """says (promoters / NPS respondents) minus does (promoters whose friend converted), per tenant, on /metrics;
    the same number as the says-vs-does API for the gauge's period (the last 30 days up to the event clock)."""
    prefix = app.settings.topic_prefix
    outputs = [prefix + t for t in topics_produced_by("referrals")]
    async with running(app), TopicReader(kafka_bootstrap, *outputs) as reader, http_client(app) as http:
        out = Output(reader)
        await asyncio.sleep(0.5)  # a few refresh rounds with no answers yet
        assert await exported_gaps(http) == {}  # no respondents: no series (0 would claim says == does)

        await publish(
            kafka_bootstrap,
            [
                registered("ana", day(0)),
                registered("ben", day(0)),
                registered("cleo", day(0)),
                feedback("ana", day(0.5), 10, "fb-ana"),
                feedback("ben", day(0.5), 9, "fb-ben"),
                feedback("cleo", day(0.6), 3, "fb-cleo"),
            ],
            topic_prefix=prefix,
        )
        await out.wait("ReferralCodeIssued", 3)
        # 2 of 3 respondents would recommend, no friend converted yet.
        await wait_until(lambda: _gap_is(http, 0.6667), within_s=30)

        # Ana's friend registers with her code and buys: one of two promoters did refer.
        await publish(
            kafka_bootstrap,
            [registered("dora", day(1), code=code("ana")), purchased("dora", "o-dora", day(2))],
            topic_prefix=prefix,
        )
        await out.wait("ReferralConverted", 1)
        await wait_until(lambda: _gap_is(http, round(0.6667 - 0.5, 4)), within_s=30)
        clock = day(2) + timedelta(microseconds=1)  # the watermark (dora's purchase), inclusive
        period = {"since": (clock - REPORT_PERIOD).isoformat(), "until": clock.isoformat()}
        report = (await http.get("/referrals/v1/tenants/acme-diy/says-vs-does", params=period, headers=AUTH)).json()
        assert (report["respondents"], report["promoters"], report["promoters_who_referred"]) == (3, 2, 1)
        assert (await exported_gaps(http))["acme-diy"] == report["gap"]

        # The first order is refunded inside the hold: the referral is rejected and no longer counts as "did".
        await publish(kafka_bootstrap, [refunded("dora", "o-dora", day(3))], topic_prefix=prefix)
        await out.wait("ReferralRejected", 1)
        await wait_until(lambda: _gap_is(http, 0.6667), within_s=30)


async def _gap_is(http: Any, expected: float) -> bool:
    return (await exported_gaps(http)).get("acme-diy") == expected

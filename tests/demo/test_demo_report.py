"""The report renders from result events on a real Kafka and from the sinks, and degrades honestly."""

from __future__ import annotations

import json
import re
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
from aiokafka import AIOKafkaProducer
from demo_results import synthetic_results
from loyalty_contracts.envelope import Envelope, encode
from loyalty_notifier.signing import signature_header
from loyalty_suite.demo.report import build_report, collect, latency_hops, write_report
from loyalty_suite.demo.retailer import RetailerConfig, build_plan, expected_facts
from loyalty_suite.demo.sinks import Sinks

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"
SECTIONS = ("Tier distribution over time", "Referral funnel and the says-vs-does gap", "NPS trend by segment",
            "Detractor cases and deadline compliance", "Themes in what customers say",
            "Messages per channel and suppressions", "End-to-end latency per flow", "What went through Kafka")


async def produce(bootstrap: str, prefix: str, envelopes: list[Envelope]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for env in envelopes:
            record = encode(env)
            await producer.send(prefix + record.topic, record.value, key=record.key, headers=record.headers)
        await producer.flush()
    finally:
        await producer.stop()


async def send_to_sinks(sinks_endpoints, results: list[Envelope], registrations: dict[str, str]) -> int:  # type: ignore[no-untyped-def]
    """What the notifier would have sent for the synthetic NotificationDelivered events."""
    sent = 0
    by_id = {e.id: e for e in results}
    async with httpx.AsyncClient() as http:
        for env in results:
            if env.data.event_type != "NotificationDelivered":
                continue
            if env.data.channel == "email":
                msg = EmailMessage()
                msg["From"], msg["To"] = "hello@acme-diy.example", registrations[env.data.customer_id]
                msg["Subject"] = f"You are a {by_id[env.data.source_event_id].data.to_tier} now"
                msg["X-Loyalty-Notification"] = env.data.notification_id
                msg.set_content("New perks inside.")
                msg.add_alternative("<h1>New perks</h1><p>Early access.</p>", subtype="html")
                await aiosmtplib.send(msg, hostname=sinks_endpoints.host, port=sinks_endpoints.smtp_port)
            else:
                source = by_id[env.data.source_event_id]
                body = json.dumps({"type": source.type, "timestamp": source.time.isoformat(),
                                   "data": source.data.model_dump(mode="json")}).encode()
                now = int(time.time())
                response = await http.post(sinks_endpoints.webhook_url("crm"), content=body, headers={
                    "webhook-id": f"msg_{source.id}", "webhook-timestamp": str(now),
                    "webhook-signature": signature_header([sinks_endpoints.webhook_secret], f"msg_{source.id}",
                                                          now, body)})
                assert response.status_code == 200
            sent += 1
    return sent


async def test_report_renders_every_section_from_kafka_and_sinks(
    kafka_bootstrap: str, demo_prefix: str, unique_suffix: str, tmp_path: Path
) -> None:
    prefix = demo_prefix
    plan = build_plan(RetailerConfig(customers=60, days=45, seed=4, id_prefix=f"r{unique_suffix}"))
    results = list(synthetic_results(plan))
    started_ms = int(time.time() * 1000) - 1000
    await produce(kafka_bootstrap, prefix, plan.envelopes)
    await produce(kafka_bootstrap, prefix, results)
    emails = {e.data.customer_id: e.data.contacts.email for e in plan.envelopes
              if e.data.event_type == "CustomerRegistered"}
    async with Sinks(tmp_path) as endpoints:
        sent = await send_to_sinks(endpoints, results, emails)
    assert sent > 5

    data = await collect(kafka_bootstrap, tenant="acme-diy", run_dir=tmp_path, since_ms=started_ms,
                         programs_dir=PROGRAMS, topic_prefix=prefix)
    assert len(data.records) == len(plan.envelopes) + len(results)  # nothing lost, nothing from other runs
    path, report = write_report(data, tmp_path / "out")
    page = path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert title in page, title
    assert all(s.has_data for s in report.sections), [s.key for s in report.sections if not s.has_data]
    assert "No data from" not in page
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert page.count("<svg") >= 8
    # the tiers come in ladder order from the program file, and the NPS matches the answers
    tiers = report.section("tiers").summary[0]
    assert tiers.index("novice") < tiers.index("maker")
    scores = [e.data.score for e in results if e.data.event_type == "FeedbackReceived"]
    expected_nps = round(100 * (sum(s >= 9 for s in scores) - sum(s <= 6 for s in scores)) / len(scores))
    assert f"{expected_nps:+d}" in report.section("nps").summary[0]
    # latency: every captured message is linked back to the retailer event that caused it
    _, to_sink = latency_hops(data)
    assert len(to_sink) == sent
    assert {h.flow for h in to_sink} >= {"PurchaseMade → TierChanged → email"}
    assert all(0 <= h.seconds < 120 for h in to_sink)
    # the sample messages are files next to the report, linked from it
    links = re.findall(r'href="(messages/[^"]+)"', page)
    assert links and all((path.parent / link).exists() for link in links)
    summary = "\n".join(line for s in report.sections for line in s.summary)
    assert "cases:" in summary and "referrals:" in summary
    # the published counts are checked against Kafka: all there, or the gap is named
    data.published = expected_facts(plan.envelopes).counts
    assert "Every published event is on Kafka, once." in build_report(data).section("health").html
    data.published = {**data.published, "PurchaseMade": data.published["PurchaseMade"] + 2}
    health = build_report(data).section("health")
    assert "2 published event(s) missing" in health.html and "MISSING 2" in health.summary[0]


async def test_report_says_which_service_left_no_data(kafka_bootstrap: str, demo_prefix: str, unique_suffix: str,
                                                      tmp_path: Path) -> None:
    prefix = demo_prefix
    plan = build_plan(RetailerConfig(customers=15, days=14, seed=9, id_prefix=f"n{unique_suffix}"))
    await produce(kafka_bootstrap, prefix, plan.envelopes)
    data = await collect(kafka_bootstrap, tenant="acme-diy", run_dir=tmp_path, topic_prefix=prefix)
    assert len(data.records) == len(plan.envelopes)
    report = build_report(data)
    by_key = {s.key: s for s in report.sections}
    for key, service in (("tiers", "tiers"), ("referrals", "referrals"), ("nps", "surveys"),
                         ("cases", "surveys"), ("messages", "notifier")):
        assert not by_key[key].has_data
        assert f"No data from {service}" in by_key[key].html
    assert by_key["health"].has_data
    assert "silent: referrals, tiers, surveys, notifier" in by_key["health"].summary[0]


def test_a_breach_that_raced_an_on_time_answer_is_explained() -> None:
    from datetime import UTC, datetime, timedelta

    from loyalty_contracts.events.surveys import CaseDeadlineBreached, DetractorCaseOpened, LoopClosed
    from loyalty_suite.demo.report import Rec, RunData

    opened_at = datetime(2026, 7, 1, 10, tzinfo=UTC)
    deadline = opened_at + timedelta(hours=8)
    events = [
        DetractorCaseOpened(customer_id="c-1", occurred_at=opened_at, case_id="k1", feedback_id="f1", score=2,
                            deadline_at=deadline),
        LoopClosed(customer_id="c-1", occurred_at=opened_at + timedelta(hours=3), case_id="k1", reply="Sorry",
                   resolved_by="anja", seconds_to_resolve=3 * 3600),
        CaseDeadlineBreached(customer_id="c-1", occurred_at=deadline, case_id="k1", deadline_at=deadline),
    ]
    data = RunData(tenant="acme-diy", records=[
        Rec("t", 0, i, 1_000 * i, Envelope.new(e, tenant="acme-diy", source="surveys")) for i, e in enumerate(events)
    ])
    cases = build_report(data).section("cases")
    assert "100.0 % answered in time, 1 breaches (1 raced an on-time answer)" in cases.summary[0]
    assert "1 breach(es) concern cases answered before their deadline" in cases.html

"""End-to-end: the four real service processes, the local stack and the demo sinks (issue 8).

The tests share one start of the services (module fixture `e2e`) and one event-time line: each test takes a
fresh day after everything published before it, and the crash test runs last.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest
from e2e_harness import Seen, SpanRecord, eventually, partition_lag
from e2e_suite import TENANT, E2ESuite, new_traceparent
from loyalty_contracts.base import Money
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.retail import (
    CaseResolved,
    Consents,
    Contacts,
    CustomerRegistered,
    PurchaseLine,
    PurchaseMade,
    SurveyAnswered,
)
from loyalty_kit.programs import load_program_files
from loyalty_suite.demo.retailer import RetailerConfig, build_plan, publish_stream
from loyalty_suite.services import consumer_lag, wait_drained
from loyalty_tiers import domain
from loyalty_tiers.app import tenant_rules
from loyalty_tiers.handlers import CONSUMED_TYPES, to_fact
from loyalty_tiers.program import TiersProgram

pytestmark = pytest.mark.integration

TOOLS_EUR = 1200  # 1 point per EUR on tools: 1 200 status points, over Maker's threshold (1 000)


def registration(customer_id: str, at: datetime, name: str, *, survey: bool = False,
                 referral_code: str | None = None, email_domain: str = "example.com") -> CustomerRegistered:
    return CustomerRegistered(
        customer_id=customer_id, occurred_at=at, name=name, locale="en", time_zone="Europe/Berlin",
        contacts=Contacts(email=f"{customer_id}@{email_domain}"),
        consents=Consents(transactional=True, service=True, marketing=False, survey=survey),
        referral_code=referral_code, email_domain=email_domain,
    )


def purchase(customer_id: str, at: datetime, order_id: str, eur: int, category: str = "tools") -> PurchaseMade:
    price = Money(amount_minor=eur * 100, currency="EUR")
    return PurchaseMade(
        customer_id=customer_id, occurred_at=at, order_id=order_id, store_id="web", sales_channel="web",
        lines=[PurchaseLine(line_id="1", sku=f"sku-{category}", category=category, quantity=1, unit_price=price)],
        total=price,
    )


async def delivered_email(e2e: E2ESuite, source: Seen, what: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The e-mail the SMTP sink captured for `source` (via NotificationDelivered.source_event_id)."""
    delivered = await e2e.tail.wait_for(
        lambda: [s for s in e2e.tail.of("NotificationDelivered", source.env.data.customer_id)
                 if s.env.data.source_event_id == source.env.id and s.env.data.channel == "email"],
        f"NotificationDelivered (email) for {what} {source.env.id}", timeout_s)
    assert len(delivered) == 1, f"{what}: {len(delivered)} e-mail deliveries for one event"
    notification_id = delivered[0].env.data.notification_id
    emails = [m for m in e2e.sink("email") if m.get("notification_id") == notification_id]
    assert len(emails) == 1, f"{what}: notification {notification_id} arrived {len(emails)} times at the SMTP sink"
    return emails[0]


async def test_tier_upgrade_is_one_trace_from_purchase_to_email(e2e: E2ESuite) -> None:
    day = e2e.new_day()
    customer = f"{e2e.prefix}-t1"
    await e2e.publish(registration(customer, day, "Greta Tiermann"))
    traceparent, trace_id, root_span = new_traceparent()
    purchased = await e2e.publish(purchase(customer, day + timedelta(hours=1), f"{customer}-o1", TOOLS_EUR),
                                  traceparent=traceparent)
    on_kafka = await e2e.tail.wait_for(
        lambda: [s for s in e2e.tail.of("PurchaseMade", customer) if s.env.id == purchased.id], "the PurchaseMade")
    assert on_kafka[0].headers.get("traceparent") == traceparent.encode()

    changed = await e2e.tail.wait_for(
        lambda: [s for s in e2e.tail.of("TierChanged", customer) if s.env.data.to_tier == "maker"],
        "TierChanged to maker")
    assert len(changed) == 1
    tier_changed = changed[0]
    assert tier_changed.env.data.direction == "up" and tier_changed.env.data.points == TOOLS_EUR
    assert tier_changed.trace_id == trace_id, (
        f"TierChanged carries traceparent {tier_changed.env.traceparent}, not the purchase's trace {trace_id}")

    email = await delivered_email(e2e, tier_changed, "TierChanged")
    assert email["to"].endswith(f"{customer}@example.com")
    body = email["text"] or ""
    assert "Greta" in body and "Greta" in email["subject"]
    assert "Maker" in body and "Maker" in email["subject"]
    for perk in ("Makers' digest", "Early access"):  # the new tier's perks, in the customer's locale
        assert perk in body, f"perk {perk!r} missing from the e-mail:\n{body}"
    delivery = next(s for s in e2e.tail.of("NotificationDelivered", customer)
                    if s.env.data.notification_id == email["notification_id"])
    assert delivery.trace_id == trace_id

    # The spans the services exported over OTLP: both processes took part in the purchase's trace, tiers as
    # the child of the span we published with, the notifier as the child of the span TierChanged carries.
    tier_changed_span = (tier_changed.env.traceparent or "").split("-")[2]

    async def spans_of_both() -> dict[str, list[SpanRecord]] | None:
        in_trace = [s for s in e2e.otlp.spans() if s.trace_id == trace_id]
        by_service = {svc: [s for s in in_trace if s.service == f"loyalty-{svc}"] for svc in ("tiers", "notifier")}
        return by_service if all(by_service.values()) else None

    try:
        spans = await eventually(spans_of_both, f"spans of tiers and notifier in trace {trace_id}", 30)
    except AssertionError:
        seen = sorted({(s.service, s.trace_id) for s in e2e.otlp.spans()})[:20]
        raise AssertionError(f"OTLP receiver ({e2e.otlp.requests} requests, errors {e2e.otlp.errors}) has no spans "
                             f"of both services in trace {trace_id}; (service, trace) seen: {seen}") from None
    assert any(s.parent_span_id == root_span for s in spans["tiers"]), (
        f"no tiers span is a child of the published span {root_span}: {spans['tiers']}")
    assert any(s.parent_span_id == tier_changed_span for s in spans["notifier"]), (
        f"no notifier span is a child of TierChanged's span {tier_changed_span}: {spans['notifier']}")


async def test_referred_friends_first_purchase_rewards_both_after_the_hold(e2e: E2ESuite) -> None:
    day = e2e.new_day()
    referrer, friend = f"{e2e.prefix}-t2-ref", f"{e2e.prefix}-t2-friend"
    await e2e.publish(registration(referrer, day, "Rita Referrer"))
    issued = await e2e.tail.wait_for(lambda: e2e.tail.of("ReferralCodeIssued", referrer), "ReferralCodeIssued")
    code = issued[0].env.data.code
    await e2e.publish(registration(friend, day + timedelta(days=1), "Fritz Friend", referral_code=code,
                                   email_domain="example.org"))
    bought_at = day + timedelta(days=2)
    await e2e.publish(purchase(friend, bought_at, f"{friend}-o1", 80))
    converted = await e2e.tail.wait_for(lambda: e2e.tail.of("ReferralConverted", referrer), "ReferralConverted")
    assert converted[0].env.data.referee_id == friend
    assert not e2e.tail.of("ReferralRewardGranted", referrer), "rewards granted before the hold period ended"

    await e2e.advance_clock(bought_at + timedelta(days=30, hours=1))  # hold_days: 30 after the purchase
    grants = await e2e.tail.wait_for(
        lambda: (e2e.tail.of("ReferralRewardGranted", referrer) + e2e.tail.of("ReferralRewardGranted", friend))
        if e2e.tail.of("ReferralRewardGranted", referrer) and e2e.tail.of("ReferralRewardGranted", friend) else None,
        "ReferralRewardGranted for both sides")
    by_role = {g.env.data.beneficiary_role: g for g in grants}
    assert set(by_role) == {"referrer", "referee"} and len(grants) == 2
    assert by_role["referrer"].env.data.customer_id == referrer and by_role["referrer"].env.data.points == 500
    assert by_role["referee"].env.data.customer_id == friend
    assert by_role["referee"].env.data.coupon_value == Money(amount_minor=1000, currency="EUR")

    to_referrer = await delivered_email(e2e, by_role["referrer"], "referrer's ReferralRewardGranted")
    to_friend = await delivered_email(e2e, by_role["referee"], "referee's ReferralRewardGranted")
    assert to_referrer["to"].endswith(f"{referrer}@example.com") and "Rita" in (to_referrer["text"] or "")
    assert "500 status points" in (to_referrer["text"] or "")
    assert to_friend["to"].endswith(f"{friend}@example.org") and "Fritz" in (to_friend["text"] or "")
    assert "10.00 EUR" in (to_friend["text"] or "")


async def test_detractor_answer_opens_a_case_and_resolving_it_sends_the_reply(e2e: E2ESuite) -> None:
    day = e2e.new_day()
    customer = f"{e2e.prefix}-t3"
    await e2e.publish(registration(customer, day, "Dora Detractor", survey=True))
    bought_at = day + timedelta(hours=1)
    await e2e.publish(purchase(customer, bought_at, f"{customer}-o1", 45))
    await e2e.advance_clock(bought_at + timedelta(days=30, hours=1))  # first-purchase NPS: 30 days later
    requested = await e2e.tail.wait_for(lambda: e2e.tail.of("SurveyRequested", customer), "SurveyRequested")
    request = requested[0].env.data
    assert request.kind == "nps" and request.survey_id == "first-purchase-nps"

    answered_at = e2e.now + timedelta(hours=1)
    await e2e.publish(SurveyAnswered(
        customer_id=customer, occurred_at=answered_at, survey_id=request.survey_id, request_id=request.request_id,
        score=2, comment="The courier was three days late and the parcel was crushed.", answer_channel="web"))
    opened = await e2e.tail.wait_for(lambda: e2e.tail.of("DetractorCaseOpened", customer), "DetractorCaseOpened")
    case = opened[0].env.data
    assert case.score == 2 and case.queue == "logistics"  # delivery theme → the logistics queue
    assert not e2e.tail.of("LoopClosed", customer), "loop closed before anyone resolved the case"

    reply = f"Dora, we are sorry: the courier firm has been told, and your refund {e2e.prefix}-R7 is on its way."
    await e2e.publish(CaseResolved(customer_id=customer, occurred_at=answered_at + timedelta(hours=2),
                                   case_id=case.case_id, reply=reply, resolved_by="care-e2e"))
    closed = await e2e.tail.wait_for(lambda: e2e.tail.of("LoopClosed", customer), "LoopClosed")
    assert len(closed) == 1 and closed[0].env.data.reply == reply and closed[0].env.data.case_id == case.case_id
    email = await delivered_email(e2e, closed[0], "LoopClosed")
    assert email["to"].endswith(f"{customer}@example.com")
    assert reply in (email["text"] or ""), f"the personal reply is not in the e-mail:\n{email['text']}"


async def test_crashing_tiers_mid_stream_loses_nothing_and_sends_nothing_twice(e2e: E2ESuite) -> None:
    plan = build_plan(RetailerConfig(customers=60, days=60, start=e2e.new_day(), id_prefix=f"{e2e.prefix}-s",
                                     referral_secret=e2e.referral_secret.encode()))
    stream = plan.envelopes
    crash_at = int(len(stream) * 0.4)
    reached = asyncio.Event()
    lag_at_crash: dict[str, int] = {}

    def on_progress(count: int, _env: Envelope) -> None:
        if count == crash_at:
            reached.set()

    async def crash_and_restart_tiers() -> float:
        await reached.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # crash while tiers has records it has not committed yet
            lag_at_crash.update(await consumer_lag(e2e.bootstrap, [e2e.groups["tiers"]]))
            if any(lag_at_crash.values()):
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(e2e.procs.kill, "tiers")  # SIGKILL: no shutdown, whatever was in flight
        started = time.monotonic()
        await e2e.start_service("tiers")
        return time.monotonic() - started

    restart = asyncio.create_task(crash_and_restart_tiers())
    stats = await publish_stream(e2e.bootstrap, stream, rate=30, progress_cb=on_progress)
    restart_s = await asyncio.wait_for(restart, 150)
    assert stats.published == len(stream)
    assert any(lag_at_crash.values()), "tiers was never behind during the stream: the crash interrupted nothing"
    e2e.now = max(e2e.now, max(env.time for env in stream))

    # Every retailer event consumed by every service: the run's groups have no lag left.
    lag = await wait_drained(e2e.bootstrap, list(e2e.groups.values()), timeout_s=90)
    if any(lag.values()):
        behind = {group: await partition_lag(e2e.bootstrap, group) for group, n in lag.items() if n}
        await asyncio.sleep(5)
        later = {group: await partition_lag(e2e.bootstrap, group) for group in behind}
        raise AssertionError(f"services still behind 90 s after the stream: {lag}; (committed, end) per partition "
                             f"{behind}, 5 s later {later}; tiers log:\n{e2e.log_tail('tiers', 15)}")
    await settle(e2e)
    assert not e2e.tail.dead_letters(), [
        (s.topic, s.env.type, s.headers.get("dlq_reason")) for s in e2e.tail.dead_letters()]

    # Tiers' final state equals the pure domain run over what it was given: the published retailer events plus
    # the referral rewards the referrals service granted/revoked (read back from Kafka).
    rules = tenant_rules(load_program_files(e2e.programs_dir, "tiers", TiersProgram))[TENANT]
    stream_customers = set(plan.profiles)
    inputs = [env for env in stream if env.type in CONSUMED_TYPES] + [
        s.env for s in e2e.tail.records if s.env.type in CONSUMED_TYPES and s.topic.startswith("loyalty.referral")
        and s.env.data.customer_id in stream_customers]
    facts: dict[str, list[Any]] = defaultdict(list)
    for env in inputs:
        fact = to_fact(env)
        if fact is not None:
            facts[env.data.customer_id].append(fact)
    assert sum(len(f) for f in facts.values()) > 150, "the stream should give tiers real work"
    mismatches: list[str] = []
    for customer, customer_facts in sorted(facts.items()):
        status = await e2e.get("tiers", f"/tiers/v1/tenants/{TENANT}/customers/{customer}/status")
        if status.status_code != 200:
            mismatches.append(f"{customer}: status {status.status_code} {status.text[:200]}")
            continue
        body = status.json()
        as_of = datetime.fromisoformat(body["as_of"])
        expected = domain.process(rules.program, customer, customer_facts, None, as_of, rules.zone).state
        expected_tier = rules.program.ladder[expected.tier].id
        if (body["tier"]["id"], body["points"]) != (expected_tier, expected.points):
            mismatches.append(f"{customer}: service {body['tier']['id']}/{body['points']} pts, "
                              f"reference {expected_tier}/{expected.points} pts at {as_of}")
        ledger = (await e2e.get("tiers", f"/tiers/v1/tenants/{TENANT}/customers/{customer}/ledger")).json()
        booked = {entry["entry_id"] for entry in ledger["entries"]}
        missing = {f.event_id for f in customer_facts} - booked
        if missing:
            mismatches.append(f"{customer}: {len(missing)} events never booked in the ledger: {sorted(missing)[:3]}")
    assert not mismatches, f"{len(mismatches)} of {len(facts)} customers differ:\n" + "\n".join(mismatches[:15])

    # Announced tier changes: none twice (a re-processed batch would announce again under a new id), and the last
    # one per customer is the tier the service holds.
    changes = [s for s in e2e.tail.of("TierChanged") if s.env.data.customer_id in stream_customers]
    assert changes, "no TierChanged in a 60-customer stream"
    keys = Counter((c.env.data.customer_id, c.env.data.from_tier, c.env.data.to_tier, c.env.data.effective_at)
                   for c in changes)
    assert not [k for k, n in keys.items() if n > 1], f"tier changes announced twice: {keys.most_common(3)}"
    last: dict[str, str] = {}
    for change in sorted(changes, key=lambda c: c.env.data.effective_at):
        last[change.env.data.customer_id] = change.env.data.to_tier
    for customer, tier in last.items():
        status = (await e2e.get("tiers", f"/tiers/v1/tenants/{TENANT}/customers/{customer}/status")).json()
        assert status["tier"]["id"] == tier, f"{customer}: last announced {tier}, holds {status['tier']['id']}"

    # The sinks: every delivery once, and exactly the deliveries the notifier reported.
    delivered = [s.env.data for s in e2e.tail.of("NotificationDelivered")]
    per_key = Counter((d.source_event_id, d.recipient_hash, d.channel) for d in delivered)
    assert not [k for k, n in per_key.items() if n > 1], f"deliveries reported twice: {per_key.most_common(3)}"
    for sink in ("email", "sms"):
        arrived = Counter(m.get("notification_id") for m in e2e.sink(sink))
        assert not [n for n, count in arrived.items() if count > 1], (
            f"{sink}: the same notification arrived more than once: {arrived.most_common(3)}")
        reported = {d.notification_id for d in delivered if d.channel == sink}
        assert reported <= set(arrived), f"{sink}: reported delivered but never arrived: {reported - set(arrived)}"
    chats = {p.telegram_chat_id: p.customer_id for p in plan.profiles.values() if p.telegram_chat_id}
    arrived_telegram = Counter(chats[m["chat_id"]] for m in e2e.sink("telegram") if m["chat_id"] in chats)
    reported_telegram = Counter(d.customer_id for d in delivered if d.channel == "telegram")
    assert arrived_telegram == reported_telegram, (
        f"telegram messages per customer differ from NotificationDelivered: "
        f"{(arrived_telegram - reported_telegram) or (reported_telegram - arrived_telegram)}")
    redelivered = sum(1 for n in e2e.tail.copies.values() if n > 1)
    metrics = (await e2e.get("tiers", "/metrics")).text
    reread = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("loyalty_events_duplicate_total"))
    print(f"\nstream {len(stream)} events ({stats.rate:.0f}/s), tiers killed after {crash_at} with lag "
          f"{lag_at_crash}, ready again in {restart_s:.1f}s; {len(facts)} customers checked, {len(changes)} tier "
          f"changes, {len(delivered)} deliveries; result records on Kafka twice under one id: {redelivered}; "
          f"events the restarted tiers re-read and its inbox skipped: {reread:.0f}")


async def settle(e2e: E2ESuite, quiet_s: float = 3.0, timeout_s: float = 60.0) -> None:
    """Wait until nothing new arrives on the result topics or at the sinks for `quiet_s` (senders, timers)."""
    deadline = time.monotonic() + timeout_s
    last = (-1, -1)
    since = time.monotonic()
    while time.monotonic() < deadline:
        await e2e.tail.poll()
        now = (len(e2e.tail.records), sum(len(e2e.sink(s)) for s in ("email", "sms", "telegram", "webhook")))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        await asyncio.sleep(0.5)

"""Publishing the retailer's stream to a real Kafka, with the customer simulator answering what surveys asks."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from loyalty_contracts.envelope import Envelope, encode
from loyalty_contracts.events.surveys import DetractorCaseOpened, SurveyRequested
from loyalty_suite.demo.report import collect
from loyalty_suite.demo.retailer import (
    CustomerSimulator,
    RetailerConfig,
    SimClock,
    build_plan,
    run_stream,
)


async def test_stream_reaches_kafka_in_full_and_the_simulator_reacts(kafka_bootstrap: str, demo_prefix: str,
                                                                     unique_suffix: str) -> None:
    prefix = demo_prefix
    plan = build_plan(RetailerConfig(customers=25, days=20, seed=2, id_prefix=f"s{unique_suffix}"))
    surveyed = next(p for p in plan.profiles.values() if p.consents.survey)
    progress: list[int] = []
    a_third_published = asyncio.Event()

    def on_progress(count: int, env: Envelope) -> None:
        progress.append(count)
        if count >= len(plan.envelopes) // 3:
            a_third_published.set()

    async def fake_surveys_service() -> None:
        """Stands in for the surveys service: asks one customer a survey and opens one case, mid-stream."""
        await a_third_published.wait()
        at = plan.envelopes[len(plan.envelopes) // 3].time
        rng = random.Random(1)
        request = SurveyRequested(customer_id=surveyed.customer_id, occurred_at=at, request_id="req-sim-1",
                                  survey_id="first-purchase-nps", kind="nps", answer_token="t" * 20,
                                  answer_url="https://f.example/a", expires_at=at + timedelta(days=14),
                                  trigger="purchase")
        case = DetractorCaseOpened(customer_id=surveyed.customer_id, occurred_at=at, case_id="case-sim-1",
                                   feedback_id="fb-1", score=2, deadline_at=at + timedelta(hours=8))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for data in (request, case):
                record = encode(Envelope.new(data, tenant="acme-diy", source="surveys",
                                             id=f"{rng.getrandbits(64):x}"))
                await producer.send_and_wait(prefix + record.topic, record.value, key=record.key,
                                             headers=record.headers)
        finally:
            await producer.stop()

    helper = asyncio.create_task(fake_surveys_service())
    result = await run_stream(kafka_bootstrap, plan, rate=400, progress_cb=on_progress,
                              settle_s=3.0, topic_prefix=prefix)
    await helper
    assert result.stats.published == len(plan.envelopes) == progress[-1]
    assert result.stats.rate < 450  # paced, not a burst
    # answer_share 0.6 and resolve_share 0.85 make "nothing happened" possible but unlikely; the seed fixes it
    assert result.simulated.get("SurveyAnswered", 0) + result.simulated.get("CaseResolved", 0) >= 1
    data = await collect(kafka_bootstrap, tenant="acme-diy", topic_prefix=prefix)
    names = [r.name for r in data.records]
    retailer = [r for r in data.records if r.producer == "retailer"]
    assert len(retailer) == len(plan.envelopes) + sum(result.simulated.values())
    for name, count in result.simulated.items():
        assert names.count(name) == count
    answers = [r.env.data for r in data.records if r.name == "SurveyAnswered"]
    assert all(a.request_id == "req-sim-1" for a in answers)
    assert result.expected.counts["PurchaseMade"] == names.count("PurchaseMade")


async def test_simulator_answers_and_resolves_when_asked(kafka_bootstrap: str, demo_prefix: str,
                                                        unique_suffix: str) -> None:
    prefix = demo_prefix
    plan = build_plan(RetailerConfig(customers=10, days=10, seed=5, id_prefix=f"q{unique_suffix}"))
    profile = next(p for p in plan.profiles.values() if p.consents.survey)
    clock = SimClock()
    clock.advance(plan.envelopes[-1].time)
    simulator = CustomerSimulator(kafka_bootstrap, plan, clock, answer_share=1.0, resolve_share=1.0,
                                  on_time_share=1.0, topic_prefix=prefix)
    await simulator.start()
    stop = asyncio.Event()
    task = asyncio.create_task(simulator.run(stop))
    at = plan.envelopes[-1].time - timedelta(hours=12)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i, data in enumerate([
            SurveyRequested(customer_id=profile.customer_id, occurred_at=at, request_id="req-1", survey_id="s",
                            kind="csat", answer_token="t" * 20, answer_url="https://f.example/a",
                            expires_at=at + timedelta(days=14), trigger="delivery"),
            DetractorCaseOpened(customer_id=profile.customer_id, occurred_at=at, case_id="case-1",
                                feedback_id="fb-1", score=1, deadline_at=at + timedelta(hours=8)),
            SurveyRequested(customer_id="someone-else", occurred_at=at, request_id="req-2", survey_id="s",
                            kind="nps", answer_token="t" * 20, answer_url="https://f.example/a",
                            expires_at=at + timedelta(days=14), trigger="purchase"),
        ]):
            record = encode(Envelope.new(data, tenant="acme-diy", source="surveys", id=f"e-{i}"))
            await producer.send_and_wait(prefix + record.topic, record.value, key=record.key, headers=record.headers)
    finally:
        await producer.stop()
    for _ in range(100):
        if sum(simulator.published.values()) >= 2:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await task
    await simulator.drain()
    await simulator.stop()
    assert simulator.published == {"SurveyAnswered": 1, "CaseResolved": 1}
    assert simulator.ignored == 1  # a customer this retailer does not know
    data = await collect(kafka_bootstrap, tenant="acme-diy", topic_prefix=prefix)
    [answer] = [r.env.data for r in data.records if r.name == "SurveyAnswered"]
    [resolution] = [r.env.data for r in data.records if r.name == "CaseResolved"]
    assert (answer.request_id, answer.customer_id) == ("req-1", profile.customer_id) and 1 <= answer.score <= 5
    assert resolution.case_id == "case-1" and at < resolution.occurred_at <= at + timedelta(hours=8)

"""Model rules: strict types, money never float, timezone-aware times, catalogue consistency."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from loyalty_contracts.base import Event, Money
from loyalty_contracts.catalogue import (
    SERVICES,
    TOPICS,
    dead_letter_topic,
    event_types_consumed_by,
    topic_for,
    topics_consumed_by,
    topics_produced_by,
)
from loyalty_contracts.events.retail import DeliveryCompleted, PurchaseMade
from loyalty_contracts.generate import event_schema
from loyalty_contracts.registry import EVENT_TYPES, model_for
from loyalty_contracts.samples import SAMPLES, sample_of, with_customer
from pydantic import ValidationError


def test_money_rejects_float_and_bool_and_bad_currency() -> None:
    assert Money(amount_minor=1999, currency="EUR").amount_minor == 1999
    for bad in (19.99, 1999.0, True, "1999"):
        with pytest.raises(ValidationError):
            Money(amount_minor=bad, currency="EUR")  # type: ignore[arg-type]
    for currency in ("eur", "EURO", "E1R"):
        with pytest.raises(ValidationError):
            Money(amount_minor=1, currency=currency)
    with pytest.raises(ValidationError):
        Money.model_validate_json('{"amount_minor": 19.0, "currency": "EUR"}')


def test_no_money_field_anywhere_is_a_json_number() -> None:
    """Every Money in every schema is an integer; no field named like an amount is a float."""
    for ce_type, model in EVENT_TYPES.items():
        schema = event_schema(model)
        money = schema.get("$defs", {}).get("Money")
        if money is not None:
            assert money["properties"]["amount_minor"]["type"] == "integer", ce_type
        text = json.dumps(schema)
        assert '"type": "number"' not in text or ce_type == "loyalty.TierProgressMilestone.v1", ce_type


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValidationError):
        DeliveryCompleted(customer_id="c", occurred_at=datetime(2026, 1, 1), order_id="o")
    with pytest.raises(ValidationError):
        DeliveryCompleted.model_validate_json('{"customer_id":"c","occurred_at":"2026-01-01T00:00:00","order_id":"o"}')
    ok = DeliveryCompleted.model_validate_json(
        '{"customer_id":"c","occurred_at":"2026-01-01T00:00:00+03:00","order_id":"o"}'
    )
    assert ok.occurred_at.utcoffset() is not None


def test_strict_python_construction_rejects_iso_strings_but_json_accepts_them() -> None:
    with pytest.raises(ValidationError):
        DeliveryCompleted(customer_id="c", occurred_at="2026-01-01T00:00:00Z", order_id="o")  # type: ignore[arg-type]
    assert DeliveryCompleted(customer_id="c", occurred_at=datetime(2026, 1, 1, tzinfo=UTC), order_id="o")


def test_extra_fields_are_forbidden_when_building_and_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        DeliveryCompleted(  # type: ignore[call-arg]
            customer_id="c", occurred_at=datetime(2026, 1, 1, tzinfo=UTC), order_id="o", typo=1
        )
    event = sample_of(DeliveryCompleted)
    with pytest.raises(ValidationError):
        event.order_id = "other"  # type: ignore[misc]


def test_purchase_needs_lines_and_positive_quantities() -> None:
    body = json.loads(SAMPLES["loyalty.PurchaseMade.v1"].model_dump_json())
    body["lines"] = []
    with pytest.raises(ValidationError):
        PurchaseMade.model_validate_json(json.dumps(body))
    body = json.loads(SAMPLES["loyalty.PurchaseMade.v1"].model_dump_json())
    body["lines"][0]["quantity"] = 0
    with pytest.raises(ValidationError):
        PurchaseMade.model_validate_json(json.dumps(body))


def test_registry_and_samples_cover_every_type() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)
    for ce_type, model in EVENT_TYPES.items():
        assert issubclass(model, Event)
        assert ce_type == f"loyalty.{model.event_type}.v{model.event_version}"
        assert model_for(ce_type) is model
        assert type(SAMPLES[ce_type]) is model
    with pytest.raises(KeyError, match=r"loyalty\.Nope\.v1"):
        model_for("loyalty.Nope.v1")


def test_with_customer_rebinds_subject_and_time() -> None:
    t = datetime(2027, 1, 1, tzinfo=UTC)
    event = with_customer(sample_of(PurchaseMade), "c-9", t)
    assert (event.customer_id, event.occurred_at) == ("c-9", t)
    assert event.order_id == "order-1001"
    with pytest.raises(ValueError, match="timezone-aware"):
        with_customer(sample_of(PurchaseMade), "c-9", datetime(2027, 1, 1))
    with pytest.raises(ValueError, match="customer_id"):
        with_customer(sample_of(PurchaseMade), "")


def test_catalogue_names_and_routing() -> None:
    assert topic_for("loyalty.PurchaseMade.v1") == "loyalty.purchase-made.v1"
    assert topic_for("loyalty.TierProgressMilestone.v1") == "loyalty.tier-progress-milestone.v1"
    assert dead_letter_topic("tiers") == "loyalty.dlq.tiers.v1"
    with pytest.raises(KeyError):
        dead_letter_topic("nobody")
    assert len({t.name for t in TOPICS}) == len(TOPICS) == len(EVENT_TYPES)
    for t in TOPICS:
        assert t.key == "customer_id" and t.partitions == 6 and t.retention_ms > 0
        assert t.public == (t.producers != ("retailer",))


def test_consumers_follow_the_product_brief() -> None:
    tiers = set(event_types_consumed_by("tiers"))
    assert {
        "loyalty.PurchaseMade.v1",
        "loyalty.PurchaseRefunded.v1",
        "loyalty.ReviewLeft.v1",
        "loyalty.SurveyAnswered.v1",
        "loyalty.CommunityActivity.v1",
        "loyalty.ReferralRewardGranted.v1",
        "loyalty.ReferralRewardRevoked.v1",
    } == tiers
    # a referred friend's bonus comes from the reward (fraud-checked, clawed back on refund), not the conversion
    assert "loyalty.ReferralConverted.v1" not in tiers
    assert "loyalty.feedback-received.v1" in topics_consumed_by("referrals")
    assert "loyalty.improvement-shipped.v1" in topics_consumed_by("surveys")
    notifier = set(topics_consumed_by("notifier"))
    results = {name for s in ("tiers", "referrals", "surveys") for name in topics_produced_by(s)}
    assert results | {"loyalty.customer-registered.v1", "loyalty.consent-changed.v1"} <= notifier
    for service in SERVICES:
        for name in topics_produced_by(service):
            assert service not in {c for t in TOPICS if t.name == name for c in t.consumers}


def test_a_v2_gets_its_own_topic_side_by_side() -> None:
    from loyalty_contracts.catalogue import topic_name

    assert topic_name("PurchaseMade", 2) == "loyalty.purchase-made.v2"
    assert topic_name("PurchaseMade", 1) == topic_for("loyalty.PurchaseMade.v1")


def test_reward_payload_must_match_its_kind() -> None:
    from loyalty_contracts.events.referrals import ReferralRewardGranted, ReferralRewardRevoked

    granted = sample_of(ReferralRewardGranted)
    base = granted.model_dump()
    ok_coupon = {**base, "kind": "coupon", "points": None, "coupon_value": Money(amount_minor=2000, currency="USD")}
    assert ReferralRewardGranted(**ok_coupon).coupon_value is not None
    for bad in (
        {**base, "points": None},  # kind points without points
        {**base, "perk_id": "early-access"},  # two payloads
        {**base, "kind": "perk"},  # perk without perk_id, with points
    ):
        with pytest.raises(ValidationError, match="needs exactly the field"):
            ReferralRewardGranted(**bad)
    revoked = sample_of(ReferralRewardRevoked).model_dump()
    with pytest.raises(ValidationError, match="needs exactly the field"):
        ReferralRewardRevoked(**{**revoked, "points": None})


def test_purchase_lines_share_the_order_currency_and_have_unique_ids() -> None:
    body = json.loads(sample_of(PurchaseMade).model_dump_json())
    body["lines"][0]["unit_price"]["currency"] = "USD"
    with pytest.raises(ValidationError, match="order currency"):
        PurchaseMade.model_validate_json(json.dumps(body))
    body = json.loads(sample_of(PurchaseMade).model_dump_json())
    body["lines"][1]["line_id"] = body["lines"][0]["line_id"]
    with pytest.raises(ValidationError, match="unique"):
        PurchaseMade.model_validate_json(json.dumps(body))


def test_partial_refund_must_list_lines() -> None:
    from loyalty_contracts.events.retail import PurchaseRefunded

    refund = sample_of(PurchaseRefunded).model_dump()
    with pytest.raises(ValidationError, match="partial refund"):
        PurchaseRefunded(**{**refund, "lines": []})
    assert PurchaseRefunded(**{**refund, "full": True, "lines": []}).full

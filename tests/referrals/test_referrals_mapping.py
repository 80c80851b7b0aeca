"""Contract ↔ domain mapping in handlers.py (pure): every effect becomes a valid v1 event that round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from loyalty_contracts.envelope import Envelope, decode, encode
from loyalty_kit.programs import load_programs
from loyalty_referrals.domain import (
    ClaimSource,
    CodeIssued,
    Converted,
    HoldScheduled,
    Rejected,
    RejectReason,
    RewardGranted,
    RewardRevoked,
    RewardSpec,
    SentToReview,
)
from loyalty_referrals.handlers import (
    invitation_of,
    needs_of,
    purchase_of,
    registration_of,
    reward_id_for,
    to_contract,
)
from loyalty_referrals.program import ReferralsProgram
from referrals_events import contact_hash, invited, purchased, registered
from referrals_factories import T0, TENANT, days

PROGRAMS = Path(__file__).resolve().parents[2] / "programs"


@pytest.fixture(scope="module")
def program() -> ReferralsProgram:
    return load_programs(PROGRAMS, "referrals", ReferralsProgram)[TENANT]


def roundtrip(event: object) -> object:
    env = Envelope.new(event, tenant=TENANT, source="/test")  # type: ignore[arg-type]
    record = encode(env)
    return decode(record.key, record.value, record.headers).data


def test_every_publishing_effect_maps_to_a_valid_event(program: ReferralsProgram) -> None:
    points = RewardSpec(kind="points", points=500)
    coupon = RewardSpec(kind="coupon", amount_minor=1000, currency="EUR")
    perk = RewardSpec(kind="perk", perk="early-access")
    effects = [
        CodeIssued("alice", "K7MX3QPA", T0),
        Converted("ref-1", "alice", "bob", "o-1", ClaimSource.INVITATION, T0, T0 + days(30)),
        RewardGranted("ref-1", "alice", "bob", "referrer", "alice", points, T0),
        RewardGranted("ref-1", "alice", "bob", "referee", "bob", coupon, T0),
        RewardGranted("ref-1", "alice", "bob", "referee", "bob", perk, T0),
        RewardRevoked("ref-1", "alice", "bob", "referrer", "alice", points, "first_order_refunded", T0),
        Rejected("ref-1", "alice", "bob", RejectReason.FIRST_ORDER_REFUNDED, T0, "refund"),
        Rejected(None, None, "bob", RejectReason.UNKNOWN_CODE, T0),
    ]
    events = [to_contract(e, TENANT, program) for e in effects]
    assert all(e is not None for e in events)
    for event in events:
        assert roundtrip(event) == event
    issued, converted, granted_points, granted_coupon, granted_perk, revoked, rejected, unknown = events
    assert issued.share_link == "https://www.acme-diy.example/invite/K7MX3QPA"  # type: ignore[union-attr]
    assert converted.customer_id == "alice"  # keyed by the referrer  # type: ignore[union-attr]
    assert (granted_points.customer_id, granted_points.points) == ("alice", 500)  # type: ignore[union-attr]
    assert granted_coupon.coupon_value.amount_minor == 1000  # type: ignore[union-attr]
    assert granted_perk.perk_id == "early-access"  # type: ignore[union-attr]
    assert revoked.reward_id == granted_points.reward_id == reward_id_for("ref-1", "referrer")  # type: ignore[union-attr]
    assert rejected.reason == "first_order_refunded" and rejected.customer_id == "bob"  # type: ignore[union-attr]
    assert unknown.referral_id and unknown.referrer_id is None  # type: ignore[union-attr]


def test_every_reason_code_is_in_the_contract(program: ReferralsProgram) -> None:
    for reason in RejectReason:
        event = to_contract(Rejected("r", "a", "b", reason, T0), TENANT, program)
        assert roundtrip(event) == event


def test_state_only_effects_publish_nothing(program: ReferralsProgram) -> None:
    assert to_contract(HoldScheduled("r", "b", T0), TENANT, program) is None
    assert to_contract(SentToReview("r", "a", "b", RejectReason.VELOCITY_LIMIT, T0), TENANT, program) is None


def test_inputs_map_to_domain_facts() -> None:
    reg = registration_of(registered("bob", T0, code="ab-cd").data)  # type: ignore[arg-type]
    assert reg.contact_hashes == {contact_hash("bob")} and reg.referral_code == "ab-cd"
    inv = invitation_of(invited("alice", "bob", T0, "inv-1").data)  # type: ignore[arg-type]
    assert (inv.referrer_id, inv.contact_hash) == ("alice", contact_hash("bob"))
    buy = purchase_of(purchased("bob", "o-1", T0, 4200).data)  # type: ignore[arg-type]
    assert (buy.total_minor, buy.currency, buy.lines[0].category) == (4200, "EUR", "tools")


def test_needs_of_a_batch() -> None:
    events = [
        registered("bob", T0 + days(1), code="ab-cd"),
        invited("alice", "carol", T0, "inv-1"),
        purchased("dave", "o-1", T0 + days(2), code="XY23"),
    ]
    needs = needs_of(events)
    assert needs.subjects == {"bob", "dave"} and needs.referrers == {"alice"}
    assert needs.codes == {"ABCD", "XY23"}
    assert needs.contact_hashes == {contact_hash("bob"), contact_hash("carol")}
    assert needs.earliest == T0

"""Unit tests of the pure referral rules (codes, attribution, conversion, holds, refunds, fraud, reports)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loyalty_referrals.domain import (
    CODE_ALPHABET,
    ClaimSource,
    CodeIssued,
    Converted,
    HoldScheduled,
    InvalidCode,
    OrderLine,
    ReferralStatus,
    Rejected,
    RejectReason,
    ReviewError,
    RewardGranted,
    RewardRevoked,
    RewardStatus,
    SentToReview,
    VelocityRules,
    derive_code,
    funnel,
    normalize_code,
    referral_id_for,
    says_vs_does,
    share_link,
    uuid5_text,
    validate_vanity_code,
)
from referrals_factories import (
    SECRET,
    T0,
    TENANT,
    code_of,
    days,
    invite,
    new_book,
    nps,
    purchase,
    refund,
    register,
)

# ------------------------------------------------------------------------------------------------ codes


def test_code_is_stable_readable_and_secret_dependent() -> None:
    code = derive_code(SECRET, TENANT, "c-1")
    assert code == derive_code(SECRET, TENANT, "c-1")
    assert len(code) == 8 and set(code) <= set(CODE_ALPHABET)
    assert not set("01OIL") & set(CODE_ALPHABET)
    assert code != derive_code(SECRET, TENANT, "c-2")
    assert code != derive_code(b"another-secret-of-16-bytes", TENANT, "c-1")
    assert code != derive_code(SECRET, "other-tenant", "c-1")
    assert code != derive_code(SECRET, TENANT, "c-1", attempt=1)
    assert len(derive_code(SECRET, TENANT, "c-1", length=12)) == 12


def test_codes_spread_over_the_alphabet() -> None:
    codes = {derive_code(SECRET, TENANT, f"c-{i}") for i in range(2000)}
    assert len(codes) == 2000
    used = {ch for code in codes for ch in code}
    assert used == set(CODE_ALPHABET)


def test_code_typed_by_a_person_is_normalized() -> None:
    assert normalize_code(" ab2c-d3ef ") == "AB2CD3EF"
    book = new_book()
    register(book, "alice", T0)
    typed = code_of("alice").lower()[:4] + "-" + code_of("alice").lower()[4:]
    assert book.resolve_code(typed) == "alice"


def test_share_link_and_vanity_codes() -> None:
    assert share_link("https://x.example/invite/{code}", "AB23") == "https://x.example/invite/AB23"
    assert validate_vanity_code("diy-guru") == "DIYGURU"
    with pytest.raises(InvalidCode, match="4 to 20"):
        validate_vanity_code("ab")
    with pytest.raises(InvalidCode, match="reserved"):
        validate_vanity_code("admin")


def test_registration_issues_the_code_once() -> None:
    book = new_book()
    effects = register(book, "alice", T0)
    assert effects == [CodeIssued("alice", code_of("alice"), T0)]
    assert register(book, "alice", T0 + days(1)) == []
    assert book.customers["alice"].registered_at == T0


# ------------------------------------------------------------------------------------------------ happy path


def _invited_and_converted(**rules: object) -> tuple:
    book = new_book(**rules)
    register(book, "alice", T0)
    invite(book, "alice", "h-bob", T0 + days(1), invitation_id="inv-1")
    register(book, "bob", T0 + days(2))
    effects = purchase(book, "bob", T0 + days(3), order_id="o-1", total=5000)
    return book, effects


def test_invitation_registration_purchase_hold_then_grant() -> None:
    book, effects = _invited_and_converted()
    referral_id = referral_id_for(TENANT, "bob")
    hold_until = T0 + days(33)
    assert effects == [
        Converted(referral_id, "alice", "bob", "o-1", ClaimSource.INVITATION, T0 + days(3), hold_until),
        HoldScheduled(referral_id, "bob", hold_until),
    ]
    assert book.referrals["bob"].status == ReferralStatus.HELD
    assert book.on_hold_expired("bob", hold_until - days(0.01)) == []
    granted = book.on_hold_expired("bob", hold_until)
    assert [(g.role, g.beneficiary_id, g.spec.kind) for g in granted] == [
        ("referrer", "alice", "points"),
        ("referee", "bob", "coupon"),
    ]
    assert all(isinstance(g, RewardGranted) and g.at == hold_until for g in granted)
    assert book.referrals["bob"].status == ReferralStatus.REWARDED
    assert book.on_hold_expired("bob", hold_until + days(1)) == []  # a timer fired twice pays once


def test_zero_hold_days_grants_when_timer_fires_at_the_purchase_time() -> None:
    book, effects = _invited_and_converted(hold_days=0)
    assert effects[1] == HoldScheduled(referral_id_for(TENANT, "bob"), "bob", T0 + days(3))
    assert len(book.on_hold_expired("bob", T0 + days(3))) == 2


def test_code_at_registration_converts() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0 + days(1), code=code_of("alice"))
    effects = purchase(book, "bob", T0 + days(2))
    assert isinstance(effects[0], Converted) and effects[0].source == ClaimSource.CODE_AT_REGISTRATION


def test_code_at_first_purchase_converts_but_not_at_a_later_purchase() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0 + days(1))
    register(book, "carol", T0 + days(1))
    effects = purchase(book, "bob", T0 + days(2), code=code_of("alice"))
    assert isinstance(effects[0], Converted) and effects[0].source == ClaimSource.CODE_AT_PURCHASE
    purchase(book, "carol", T0 + days(2))
    assert purchase(book, "carol", T0 + days(3), code=code_of("alice")) == []
    assert "carol" not in book.referrals


def test_unknown_code_stays_pending_without_a_rejection() -> None:
    book = new_book()
    assert register(book, "bob", T0, code="zzzz-zzzz")[1:] == []
    assert purchase(book, "bob", T0 + days(1)) == []
    assert [(p.code, p.referee_id) for p in book.pending_codes["bob"]] == [("ZZZZZZZZ", "bob")]
    assert "bob" not in book.referrals


def test_code_typed_before_its_owner_registered_is_claimed_when_issued() -> None:
    """A replay or a lagging partition can consume the friend's events before the referrer's registration."""
    book = new_book()
    register(book, "bob", T0 + days(1), code=code_of("alice"))
    effects = register(book, "alice", T0)  # consumed late, registered earlier
    assert [type(e).__name__ for e in effects] == ["CodeIssued"]
    effects = purchase(book, "bob", T0 + days(2))
    assert isinstance(effects[0], Converted) and effects[0].referrer_id == "alice"
    assert book.resolved_pending and not book.pending_codes["bob"]


def test_many_pending_codes_each_resolve_to_their_own_owner_only() -> None:
    """Codes typed before their owners registered (one index per book): each owner's registration claims
    exactly the friends who typed its code, in any order, and leaves the others pending."""
    book = new_book()
    register(book, "fay", T0 + days(1), code=code_of("dan"))
    register(book, "gil", T0 + days(1), code=code_of("eve"))
    register(book, "hal", T0 + days(1), code=code_of("dan"))
    register(book, "dan", T0)
    assert {c for c, ps in book.pending_codes.items() if ps} == {"gil"}
    assert sorted(p.referee_id for p in book.resolved_pending) == ["fay", "hal"]
    register(book, "ivy", T0 + days(2), code=code_of("eve"))  # typed after the index exists
    register(book, "eve", T0)
    assert not any(book.pending_codes.values())
    for friend, referrer in (("fay", "dan"), ("gil", "eve"), ("hal", "dan"), ("ivy", "eve")):
        effects = purchase(book, friend, T0 + days(3))
        assert isinstance(effects[0], Converted) and effects[0].referrer_id == referrer, friend


@given(st.uuids(), st.text())
def test_uuid5_text_is_the_standard_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_code_resolved_after_the_first_purchase_decides_then() -> None:
    book = new_book()
    register(book, "bob", T0 + days(1))
    purchase(book, "bob", T0 + days(2), code=code_of("alice"))
    effects = register(book, "alice", T0)
    assert [type(e).__name__ for e in effects] == ["CodeIssued", "Converted", "HoldScheduled"]


def test_purchase_arriving_before_the_registration_waits_for_it() -> None:
    book = new_book()
    register(book, "alice", T0)
    assert purchase(book, "bob", T0 + days(2), code=code_of("alice")) == []  # registration not seen yet
    effects = register(book, "bob", T0 + days(1))
    assert isinstance(effects[-2], Converted) and effects[-2].source == ClaimSource.CODE_AT_PURCHASE
    assert effects[-2].at == T0 + days(2)


def test_a_guest_who_bought_before_registering_is_not_new() -> None:
    book = new_book()
    register(book, "alice", T0)
    purchase(book, "bob", T0 + days(1), code=code_of("alice"))
    effects = register(book, "bob", T0 + days(2))
    assert [e.reason for e in effects if isinstance(e, Rejected)] == [RejectReason.EXISTING_CUSTOMER]


# ------------------------------------------------------------------------------------------------ attribution


def test_customer_who_existed_before_the_invitation_is_not_new() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0 + days(1))
    invite(book, "alice", "h-bob", T0 + days(2))
    assert purchase(book, "bob", T0 + days(3)) == []
    assert book.claims.get("bob") is None


def test_invitation_outside_the_window_does_not_claim() -> None:
    book = new_book()
    invite(book, "alice", "h-bob", T0)
    register(book, "bob", T0 + days(30.5))
    assert purchase(book, "bob", T0 + days(31)) == []


def test_invitation_arriving_after_the_registration_still_claims() -> None:
    book = new_book()
    register(book, "bob", T0 + days(2))
    invite(book, "alice", "h-bob", T0 + days(1))
    effects = purchase(book, "bob", T0 + days(3))
    assert isinstance(effects[0], Converted) and effects[0].referrer_id == "alice"


def test_invitation_arriving_after_the_first_purchase_still_converts() -> None:
    book = new_book()
    register(book, "bob", T0 + days(2))
    assert purchase(book, "bob", T0 + days(3)) == []
    effects = invite(book, "alice", "h-bob", T0 + days(1))
    assert isinstance(effects[0], Converted) and effects[0].referrer_id == "alice"


def test_a_claim_arriving_after_the_decision_changes_nothing() -> None:
    book = new_book()
    register(book, "carol", T0)
    register(book, "bob", T0 + days(2), code=code_of("carol"))
    purchase(book, "bob", T0 + days(3))
    assert invite(book, "alice", "h-bob", T0 + days(1)) == []
    assert book.referrals["bob"].referrer_id == "carol" and len(book.claims["bob"]) == 1


def test_competing_invitations_earliest_wins() -> None:
    book = new_book()
    invite(book, "zoe", "h-bob", T0 + days(2), invitation_id="inv-z")
    invite(book, "alice", "h-bob", T0 + days(1), invitation_id="inv-a")
    register(book, "bob", T0 + days(3))
    effects = purchase(book, "bob", T0 + days(4))
    assert effects[0].referrer_id == "alice"


def test_code_at_registration_beats_an_earlier_invitation() -> None:
    book = new_book()
    register(book, "carol", T0)
    invite(book, "alice", "h-bob", T0 + days(1))
    register(book, "bob", T0 + days(2), code=code_of("carol"))
    assert purchase(book, "bob", T0 + days(3))[0].referrer_id == "carol"


def test_code_at_purchase_beats_an_invitation() -> None:
    book = new_book()
    register(book, "carol", T0)
    invite(book, "alice", "h-bob", T0 + days(1))
    register(book, "bob", T0 + days(2))
    assert purchase(book, "bob", T0 + days(3), code=code_of("carol"))[0].referrer_id == "carol"


# ------------------------------------------------------------------------------------------------ first order


def test_first_order_below_minimum_after_excluded_lines_is_rejected() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0, code=code_of("alice"))
    lines = (OrderLine("tools", 1, 2500), OrderLine("delivery_fee", 1, 600))
    effects = purchase(book, "bob", T0 + days(1), total=3100, lines=lines)
    assert [e.reason for e in effects] == [RejectReason.BELOW_MINIMUM_ORDER]
    assert book.referrals["bob"].status == ReferralStatus.REJECTED
    # a second, bigger order does not reopen it: only the first purchase counts
    assert purchase(book, "bob", T0 + days(2), total=90_000) == []


def test_first_order_in_another_currency_does_not_qualify() -> None:
    from loyalty_referrals.domain import Purchase

    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0, code=code_of("alice"))
    effects = book.on_purchase(Purchase("bob", "o-1", T0 + days(1), 900_000, "USD"))
    assert [e.reason for e in effects] == [RejectReason.BELOW_MINIMUM_ORDER]


def test_conversion_window_expired() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0, code=code_of("alice"))
    effects = purchase(book, "bob", T0 + days(91))
    assert [e.reason for e in effects] == [RejectReason.OUTSIDE_ATTRIBUTION_WINDOW]


# ------------------------------------------------------------------------------------------------ fraud


def test_self_referral_same_customer() -> None:
    book = new_book()
    register(book, "alice", T0)
    effects = purchase(book, "alice", T0 + days(1), code=code_of("alice"))
    assert [e.reason for e in effects] == [RejectReason.SELF_REFERRAL]


def test_self_referral_same_contact_hash() -> None:
    book = new_book()
    register(book, "alice", T0, hashes={"h-alice", "h-shared-phone"})
    register(book, "bob", T0 + days(1), code=code_of("alice"), hashes={"h-bob", "h-shared-phone"})
    assert [e.reason for e in purchase(book, "bob", T0 + days(2))] == [RejectReason.SAME_CONTACT]


def test_self_referral_same_payment_fingerprint_and_same_address() -> None:
    book = new_book()
    register(book, "alice", T0)
    purchase(book, "alice", T0 + days(1), payment="card-1", address="addr-1")
    register(book, "bob", T0 + days(2), code=code_of("alice"))
    register(book, "carol", T0 + days(2), code=code_of("alice"))
    assert [e.reason for e in purchase(book, "bob", T0 + days(3), payment="card-1")] == [
        RejectReason.SAME_PAYMENT_FINGERPRINT
    ]
    assert [e.reason for e in purchase(book, "carol", T0 + days(3), payment="card-2", address="addr-1")] == [
        RejectReason.SAME_SHIPPING_ADDRESS
    ]


def test_blocked_domain_of_referee_or_of_the_invitation() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0, code=code_of("alice"), domain="MAILINATOR.com")
    assert [e.reason for e in purchase(book, "bob", T0 + days(1))] == [RejectReason.BLOCKED_DOMAIN]
    invite(book, "alice", "h-dan", T0, domain="mailinator.com")
    register(book, "dan", T0 + days(1), domain=None)
    assert [e.reason for e in purchase(book, "dan", T0 + days(2))] == [RejectReason.BLOCKED_DOMAIN]


def test_two_step_cycle_never_pays() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0 + days(1), code=code_of("alice"))
    assert isinstance(purchase(book, "bob", T0 + days(2))[0], Converted)  # alice -> bob
    # alice registered long ago but never bought; her first purchase uses bob's code: bob -> alice closes a cycle
    assert [e.reason for e in purchase(book, "alice", T0 + days(3), code=code_of("bob"))] == [
        RejectReason.REFERRAL_CYCLE
    ]


def test_longer_cycle_never_pays() -> None:
    book = new_book()
    for name in ("a", "b", "c"):
        register(book, name, T0)
    purchase(book, "b", T0 + days(1), code=code_of("a"))  # a -> b
    purchase(book, "c", T0 + days(2), code=code_of("b"))  # b -> c
    assert [e.reason for e in purchase(book, "a", T0 + days(3), code=code_of("c"))] == [RejectReason.REFERRAL_CYCLE]


def test_velocity_count_goes_to_review_then_staff_approve_or_reject() -> None:
    book = new_book(velocity=VelocityRules(30, 2, 500_000))
    register(book, "alice", T0)
    outcomes = []
    for i in range(4):
        register(book, f"f{i}", T0, code=code_of("alice"))
        outcomes.append(purchase(book, f"f{i}", T0 + days(1 + i))[0])
    assert [type(o).__name__ for o in outcomes] == ["Converted", "Converted", "SentToReview", "SentToReview"]
    assert outcomes[2] == SentToReview(
        referral_id_for(TENANT, "f2"), "alice", "f2", RejectReason.VELOCITY_LIMIT, T0 + days(3)
    )
    approved = book.review(referral_id_for(TENANT, "f2"), True, "staff-1", T0 + days(10))
    assert isinstance(approved[0], Converted) and isinstance(approved[1], HoldScheduled)
    assert approved[1].due_at == T0 + days(3 + 30)
    rejected = book.review(referral_id_for(TENANT, "f3"), False, "staff-1", T0 + days(10))
    assert rejected[0].reason == RejectReason.REJECTED_BY_STAFF
    assert "velocity_limit" in rejected[0].detail and "staff-1" in rejected[0].detail
    assert book.referrals["f3"].status == ReferralStatus.REJECTED
    with pytest.raises(ReviewError, match="not in review"):
        book.review(referral_id_for(TENANT, "f3"), True, "staff-1", T0 + days(11))
    with pytest.raises(ReviewError, match="not known"):
        book.review("nope", True, "staff-1", T0)


def test_velocity_window_rolls() -> None:
    book = new_book(velocity=VelocityRules(30, 1, 500_000), review_reasons=frozenset())
    register(book, "alice", T0)
    for i, day in enumerate((1, 20, 32)):
        register(book, f"f{i}", T0, code=code_of("alice"))
        purchase(book, f"f{i}", T0 + days(day))
    statuses = [book.referrals[f"f{i}"].status for i in range(3)]
    assert statuses == [ReferralStatus.HELD, ReferralStatus.REJECTED, ReferralStatus.HELD]
    assert book.referrals["f1"].reason == RejectReason.VELOCITY_LIMIT
    assert book.referrals["f1"].reason_detail.startswith("count:")


def test_velocity_amount() -> None:
    book = new_book(velocity=VelocityRules(30, 10, 8000), review_reasons=frozenset())
    register(book, "alice", T0)
    register(book, "f0", T0, code=code_of("alice"))
    register(book, "f1", T0, code=code_of("alice"))
    purchase(book, "f0", T0 + days(1), total=5000)
    effects = purchase(book, "f1", T0 + days(2), total=5000)
    assert [e.reason for e in effects] == [RejectReason.VELOCITY_LIMIT]
    assert effects[0].detail.startswith("amount:")


# ------------------------------------------------------------------------------------------------ refunds


def test_full_refund_inside_the_window_rejects_and_the_timer_then_pays_nothing() -> None:
    book, _ = _invited_and_converted()
    effects = refund(book, "bob", "o-1", T0 + days(10))
    assert effects == [
        Rejected(referral_id_for(TENANT, "bob"), "alice", "bob", RejectReason.FIRST_ORDER_REFUNDED, T0 + days(10))
    ]
    assert book.on_hold_expired("bob", T0 + days(40)) == []
    assert {r.status for r in book.referrals["bob"].rewards.values()} == {RewardStatus.REJECTED}
    assert refund(book, "bob", "o-1", T0 + days(11)) == []


def test_refund_of_another_order_changes_nothing() -> None:
    book, _ = _invited_and_converted()
    assert refund(book, "bob", "o-other", T0 + days(10)) == []
    assert book.referrals["bob"].status == ReferralStatus.HELD


def test_partial_refunds_reject_only_when_the_order_drops_under_the_minimum() -> None:
    book, _ = _invited_and_converted()
    assert refund(book, "bob", "o-1", T0 + days(5), full=False, amount=1500) == []  # 3500 left
    assert book.referrals["bob"].status == ReferralStatus.HELD
    effects = refund(book, "bob", "o-1", T0 + days(6), full=False, amount=1000)  # 2500 left
    assert [e.reason for e in effects] == [RejectReason.FIRST_ORDER_REFUNDED]


def test_refund_after_the_grant_revokes_per_policy() -> None:
    book, _ = _invited_and_converted()
    book.on_hold_expired("bob", T0 + days(33))
    effects = refund(book, "bob", "o-1", T0 + days(40))
    assert len(effects) == 1 and isinstance(effects[0], RewardRevoked)
    assert (effects[0].role, effects[0].beneficiary_id, effects[0].spec.points) == ("referrer", "alice", 500)
    assert book.referrals["bob"].status == ReferralStatus.REVOKED
    assert book.referrals["bob"].rewards["referee"].status == RewardStatus.GRANTED
    assert refund(book, "bob", "o-1", T0 + days(41)) == []  # a second refund does not revoke twice


def test_refund_after_the_grant_with_both_sides_clawed_back() -> None:
    book, _ = _invited_and_converted(clawback_referee=True)
    book.on_hold_expired("bob", T0 + days(33))
    assert [e.role for e in refund(book, "bob", "o-1", T0 + days(40))] == ["referrer", "referee"]


def test_refund_after_the_clawback_window_keeps_the_rewards() -> None:
    book, _ = _invited_and_converted(clawback_within_days=60)
    book.on_hold_expired("bob", T0 + days(33))
    assert refund(book, "bob", "o-1", T0 + days(64)) == []
    assert book.referrals["bob"].status == ReferralStatus.REWARDED


def test_refund_after_the_window_before_the_timer_fired_grants_then_revokes() -> None:
    book, _ = _invited_and_converted()
    effects = refund(book, "bob", "o-1", T0 + days(35))
    assert [type(e).__name__ for e in effects] == ["RewardGranted", "RewardGranted", "RewardRevoked"]
    assert book.on_hold_expired("bob", T0 + days(36)) == []


# ------------------------------------------------------------------------------------------------ redelivery


def test_replaying_the_same_facts_changes_nothing() -> None:
    book, _ = _invited_and_converted()
    assert invite(book, "alice", "h-bob", T0 + days(1), invitation_id="inv-1") == []
    assert register(book, "bob", T0 + days(2)) == []
    assert purchase(book, "bob", T0 + days(3), order_id="o-1") == []
    assert len(book.claims["bob"]) == 1


# ------------------------------------------------------------------------------------------------ reports


def test_says_vs_does_measures_the_gap() -> None:
    feedback = [
        nps("p1", T0, 10),
        nps("p2", T0, 9),
        nps("p3", T0, 9),
        nps("p4", T0 + days(1), 10),
        nps("d1", T0, 3),
        nps("n1", T0, 8),
        nps("p1", T0 - days(40), 2),  # outside the period
    ]
    conversions = [
        ("p1", T0 + days(10)),  # did, inside 90 days
        ("p2", T0 - days(1)),  # before the answer: does not count for "did"
        ("p3", T0 + days(120)),  # too late
        ("x", T0 + days(5)),  # a non-respondent referrer
    ]
    report = says_vs_does(
        feedback, conversions, customers=20, period_start=T0 - days(1), period_end=T0 + days(30), within_days=90
    )
    assert (report.respondents, report.promoters, report.promoters_who_referred) == (6, 4, 1)
    assert report.promoter_share == pytest.approx(4 / 6, abs=1e-4)
    assert report.promoter_referral_rate == 0.25
    assert report.customers_who_referred == 3  # p1, p2 (in period), x
    assert report.customer_referral_rate == 0.15
    assert report.gap == pytest.approx(4 / 6 - 0.25, abs=1e-4)


def test_says_vs_does_latest_answer_counts() -> None:
    report = says_vs_does([nps("a", T0, 10), nps("a", T0 + days(1), 6)], [], 1, T0, T0 + days(5), 90)
    assert (report.respondents, report.promoters) == (1, 0)


def test_funnel_rates_and_median() -> None:
    result = funnel(
        {"invited": 10, "registered": 5, "first_purchase": 4, "rewarded": 2, "revoked": 1}, [1.0, 3.0, 10.0]
    )
    assert result.rates == {"registered": 0.5, "first_purchase": 0.8, "rewarded": 0.5, "revoked": 0.5}
    assert result.median_days_to_convert == 3.0
    assert funnel({s: 0 for s in result.counts}, []).median_days_to_convert is None
    with pytest.raises(ValueError, match="lack"):
        funnel({"invited": 1}, [])


# ------------------------------------------------------------------------------------------------ arrival order


def test_refund_arriving_before_the_decision_rejects_it() -> None:
    book = new_book()
    register(book, "bob", T0 + days(2))
    purchase(book, "bob", T0 + days(3), order_id="o-1")
    assert refund(book, "bob", "o-1", T0 + days(4)) == []  # no referral yet: remembered
    effects = invite(book, "alice", "h-bob", T0 + days(1))  # the invitation arrives late
    assert [e.reason for e in effects] == [RejectReason.FIRST_ORDER_REFUNDED]


def test_refund_arriving_before_its_purchase_is_remembered() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0 + days(1), code=code_of("alice"))
    refund(book, "bob", "o-1", T0 + days(4), full=False, amount=2500)  # partial: 2500 of 5000 back
    effects = purchase(book, "bob", T0 + days(3), order_id="o-1", total=5000)
    assert [e.reason for e in effects] == [RejectReason.FIRST_ORDER_REFUNDED]


def test_partial_early_refund_that_keeps_the_minimum_still_converts() -> None:
    book = new_book()
    register(book, "alice", T0)
    register(book, "bob", T0 + days(1), code=code_of("alice"))
    refund(book, "bob", "o-1", T0 + days(4), full=False, amount=1000)
    effects = purchase(book, "bob", T0 + days(3), order_id="o-1", total=5000)
    assert isinstance(effects[0], Converted)
    assert book.referrals["bob"].refunded_minor == 1000
    assert [e.reason for e in refund(book, "bob", "o-1", T0 + days(5), full=False, amount=1500)] == [
        RejectReason.FIRST_ORDER_REFUNDED
    ]


def test_refund_dated_inside_the_hold_after_an_early_grant_revokes_both_sides() -> None:
    """The event-time clock can run ahead of one customer's events; the refund still undoes everything."""
    book, _ = _invited_and_converted()  # clawback policy: referrer only
    book.on_hold_expired("bob", T0 + days(33))
    effects = refund(book, "bob", "o-1", T0 + days(10))  # dated inside the return window
    assert sorted(e.role for e in effects if isinstance(e, RewardRevoked)) == ["referee", "referrer"]

"""Property-based tests of the referral rules (hypothesis).

- attribution is independent of the arrival order of invitations and the registration (they travel on
  different partitions), as long as they arrive before the first purchase;
- over random event logs no reward is granted twice for one referee and role, revocations never exceed grants,
  every referee has at most one referral, and the paying referral graph has no cycle.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loyalty_referrals.domain import (
    Converted,
    Invitation,
    Purchase,
    ReferralBook,
    Refund,
    Registration,
    RewardGranted,
    RewardRevoked,
    RewardStatus,
)
from referrals_factories import T0, code_of, days, new_book

REFERRERS = ["r0", "r1", "r2", "r3"]

invitation_st = st.builds(
    lambda referrer, day, inv, to_referee: Invitation(
        f"inv-{inv}", referrer, "h-bob" if to_referee else "h-other", T0 + timedelta(hours=day), "email", None
    ),
    st.sampled_from(REFERRERS),
    st.integers(0, 24 * 40),
    st.integers(0, 10_000),
    st.booleans(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    invitations=st.lists(invitation_st, max_size=6, unique_by=lambda i: i.invitation_id),
    registration_hour=st.integers(0, 24 * 45),
    code_referrer=st.one_of(st.none(), st.sampled_from(REFERRERS)),
    purchase_code_referrer=st.one_of(st.none(), st.sampled_from(REFERRERS)),
    order=st.randoms(use_true_random=False),
)
def test_attribution_does_not_depend_on_arrival_order(
    invitations: list[Invitation],
    registration_hour: int,
    code_referrer: str | None,
    purchase_code_referrer: str | None,
    order,
) -> None:
    registered_at = T0 + timedelta(hours=registration_hour)
    registration = Registration(
        "bob", registered_at, frozenset({"h-bob"}), "example.org", code_of(code_referrer) if code_referrer else None
    )
    first_purchase = Purchase(
        "bob",
        "o-1",
        registered_at + days(1),
        5000,
        "EUR",
        referral_code=code_of(purchase_code_referrer) if purchase_code_referrer else None,
    )

    # The referrers registered long before, but their registrations may be consumed in any order too.
    referrer_registrations = [
        Registration(referrer, T0 - days(100), frozenset({f"h-{referrer}"})) for referrer in REFERRERS
    ]

    def outcome(arrivals: list[Invitation | Registration | Purchase]) -> tuple:
        book = new_book()
        effects = []
        for item in arrivals:
            if isinstance(item, Registration):
                effects += book.on_registered(item, new_code=code_of(item.customer_id))
            elif isinstance(item, Purchase):
                effects += book.on_purchase(item)
            else:
                effects += book.on_invited(item)
        referral = book.referrals.get("bob")
        summary = (
            None if referral is None else (referral.referrer_id, referral.source, referral.status, referral.reason)
        )
        about_bob = [e for e in effects if "bob" in (getattr(e, "referee_id", None), getattr(e, "customer_id", None))]
        return summary, sorted(type(e).__name__ for e in about_bob)

    def with_purchase_after_the_claims(order_of_claims: list[Invitation | Registration], at: int) -> list:
        """The purchase goes anywhere after the last claim source (invitations and the referrers'
        registrations, which issue the codes), before or after bob's own registration."""
        last_invitation = max(
            (i for i, x in enumerate(order_of_claims) if isinstance(x, Invitation) or x.customer_id != "bob"),
            default=-1,
        )
        position = last_invitation + 1 + at % (len(order_of_claims) - last_invitation)
        return [*order_of_claims[:position], first_purchase, *order_of_claims[position:]]

    arrivals: list[Invitation | Registration] = [*referrer_registrations, *invitations, registration]
    expected = outcome([*arrivals, first_purchase])
    shuffled = list(arrivals)
    order.shuffle(shuffled)
    assert outcome(with_purchase_after_the_claims(shuffled, order.randrange(1000))) == expected
    assert outcome(with_purchase_after_the_claims(list(reversed(arrivals)), order.randrange(1000))) == expected


# ---------------------------------------------------------------------------------------------- random logs

CUSTOMERS = ["a", "b", "c", "d", "e"]


@st.composite
def event_logs(draw: st.DrawFn) -> list[tuple]:
    """Random but per-customer-ordered event logs over a small population so collisions are frequent."""
    n = draw(st.integers(5, 40))
    log: list[tuple] = []
    hour = 0
    for _ in range(n):
        hour += draw(st.integers(0, 72))
        at = T0 + timedelta(hours=hour)
        kind = draw(
            st.sampled_from(["register", "register", "invite", "purchase", "purchase", "refund", "tick", "redeliver"])
        )
        who = draw(st.sampled_from(CUSTOMERS))
        other = draw(st.sampled_from(CUSTOMERS))
        code = draw(st.sampled_from([None, other, other]))
        log.append(
            (
                kind,
                who,
                other,
                code,
                at,
                draw(st.integers(1000, 20_000)),
                draw(st.booleans()),
                draw(st.sampled_from([None, "card-1", "card-2"])),
            )
        )
    return log


def apply_log(book: ReferralBook, log: list[tuple]) -> list:
    effects: list = []
    seen: list = []
    orders: dict[str, list[str]] = {}
    for i, (kind, who, other, code, at, amount, flag, card) in enumerate(log):
        if kind == "redeliver" and seen:
            kind, who, other, code, at, amount, flag, card = seen[amount % len(seen)]
            i = -1 - (amount % len(seen))
        if kind == "register":
            effects += book.on_registered(
                Registration(who, at, frozenset({f"h-{who}"}), "example.org", code_of(code) if code else None),
                new_code=code_of(who),
            )
        elif kind == "invite":
            effects += book.on_invited(Invitation(f"inv-{i}", who, f"h-{other}", at, "sms", None))
        elif kind == "purchase":
            order_id = f"o-{who}-{i}"
            orders.setdefault(who, []).append(order_id)
            effects += book.on_purchase(
                Purchase(who, order_id, at, amount, "EUR", (), card, None, code_of(code) if code else None)
            )
        elif kind == "refund" and orders.get(who):
            effects += book.on_refund(Refund(who, orders[who][0], at, flag, amount))
        elif kind == "tick":
            for referee in list(book.referrals):
                effects += book.on_hold_expired(referee, at)
        if kind != "redeliver":
            seen.append((kind, who, other, code, at, amount, flag, card))
    return effects


@settings(max_examples=300, deadline=None)
@given(log=event_logs(), hold=st.integers(0, 40), clawback_referee=st.booleans())
def test_nothing_pays_twice_and_no_cycle_pays(log: list[tuple], hold: int, clawback_referee: bool) -> None:
    book = new_book(hold_days=hold, clawback_referee=clawback_referee)
    effects = apply_log(book, log)

    granted = Counter((e.referee_id, e.role) for e in effects if isinstance(e, RewardGranted))
    revoked = Counter((e.referee_id, e.role) for e in effects if isinstance(e, RewardRevoked))
    assert all(count == 1 for count in granted.values()), granted
    assert all(revoked[key] <= granted[key] for key in revoked)
    converted = Counter(e.referee_id for e in effects if isinstance(e, Converted))
    assert all(count == 1 for count in converted.values())

    # a referee's referral and its rewards agree with the effects
    for referee, referral in book.referrals.items():
        if referral.referrer_id == referee:
            assert referral.status.value == "rejected"
        for role, reward in referral.rewards.items():
            was_granted = granted[(referee, role)] == 1
            assert was_granted == (reward.status in (RewardStatus.GRANTED, RewardStatus.REVOKED))

    # the graph of referrals that paid anything has no cycle
    paid_edges = {
        referee: ref.referrer_id
        for referee, ref in book.referrals.items()
        if any(r.status != RewardStatus.REJECTED and r.status != RewardStatus.PENDING for r in ref.rewards.values())
    }
    for start in paid_edges:
        seen = {start}
        node = paid_edges.get(start)
        while node is not None:
            assert node not in seen, f"cycle through {start}"
            seen.add(node)
            node = paid_edges.get(node)


@settings(max_examples=150, deadline=None)
@given(
    ring=st.lists(st.sampled_from(CUSTOMERS), min_size=2, max_size=5, unique=True),
    gaps=st.lists(st.integers(1, 48), min_size=5, max_size=5),
)
def test_a_ring_of_codes_never_pays_the_closing_edge(ring: list[str], gaps: list[int]) -> None:
    """Each member's first purchase uses the previous member's code; the last edge closes the ring."""
    book = new_book(hold_days=0)
    for member in ring:
        book.on_registered(Registration(member, T0, frozenset({f"h-{member}"})), new_code=code_of(member))
    at = T0
    effects: list = []
    edges = [(ring[i - 1], ring[i]) for i in range(1, len(ring))] + [(ring[-1], ring[0])]
    for (referrer, referee), gap in zip(edges, gaps, strict=False):
        at = at + timedelta(hours=gap)
        effects += book.on_purchase(Purchase(referee, f"o-{referee}", at, 5000, "EUR", referral_code=code_of(referrer)))
        effects += book.on_hold_expired(referee, at)
    paid_referees = {e.referee_id for e in effects if isinstance(e, RewardGranted)}
    # every edge but the closing one pays; the closing edge would make a cycle
    assert paid_referees == set(ring[1:])
    assert book.referrals[ring[0]].reason is not None

"""Pure tier rules: facts in, ledger entries, tier state and effects out. No I/O, no wall clock.

The model, in three pure steps:

1. ``derive_ledger(program, facts)``: every consumed fact (a purchase, a refund, a review, ...) yields exactly
   one ledger entry (points, the event time they count from, their expiry, the rule behind them). Facts are
   processed in event-time order (ties by event id), so the ledger depends on the *set* of facts, never on
   arrival order: a refund that arrives before its purchase, or a late review under a daily cap, gives the
   same entries as the in-order stream.
2. ``evaluate(program, customer_id, entries, carries, as_of)``: walks the timeline of balance changes in
   event time (earnings, expiries, grace periods, overrides) and returns the tier state at ``as_of``.
   Upgrades are immediate; downgrades follow the policy (none / one_step / to_supported) after a grace.
3. ``diff(program, before, state)``: compares the state with what the service last announced (``Snapshot``)
   and returns the effects to publish (TierChanged, TierProgressMilestone, TierDowngradeScheduled).

Replaying the same facts under another program version is the same three calls with the other program,
which is how versioned ladders are recalculated (``recalculate``).

``process`` runs the three steps over all of a customer's facts: the reference. ``advance`` is the in-order
fast path: when every new fact comes later than everything known (and none is a correction or completes one),
it derives only the new facts from the ``Derivation`` the known ones left and continues the walk from the
stored ``TierState``, with the same result (property-tested against ``process``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import Any, Literal
from zoneinfo import ZoneInfo

from loyalty_tiers.program import Override, QualificationWindow, TiersProgram

# ISO 4217 minor-unit exponents that are not 2 (points are per major unit of currency).
_CURRENCY_EXPONENTS = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0,
    "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}


def currency_scale(currency: str) -> int:
    return 10 ** _CURRENCY_EXPONENTS.get(currency, 2)


# --------------------------------------------------------------------------------------------------
# Facts: the domain's view of consumed events (only what the rules need).
# --------------------------------------------------------------------------------------------------

# The value records below (facts, entries, states, effects) are never assigned after construction (changes
# go through ``dataclasses.replace``) but are not ``frozen=True``: a frozen dataclass's __init__ sets each
# field through ``object.__setattr__``, ~6x a plain one (~1 us for 7 fields), and the hot path builds
# several per event. ``unsafe_hash=True`` keeps them hashable by value, as the frozen ones were.


@dataclass(slots=True, unsafe_hash=True)
class PurchaseLine:
    line_id: str
    category: str
    quantity: int
    unit_price_minor: int


@dataclass(slots=True, unsafe_hash=True)
class Purchase:
    event_id: str
    occurred_at: datetime
    order_id: str
    currency: str
    lines: tuple[PurchaseLine, ...]


@dataclass(slots=True, unsafe_hash=True)
class Refund:
    event_id: str
    occurred_at: datetime
    order_id: str
    refund_id: str
    full: bool
    lines: tuple[tuple[str, int], ...] = ()  # (line_id, quantity)


@dataclass(slots=True, unsafe_hash=True)
class Review:
    event_id: str
    occurred_at: datetime
    review_id: str
    sku: str
    text_length: int
    has_photo: bool


@dataclass(slots=True, unsafe_hash=True)
class ReferralGrant:
    event_id: str
    occurred_at: datetime
    reward_id: str
    role: str
    points: int


@dataclass(slots=True, unsafe_hash=True)
class ReferralRevoke:
    event_id: str
    occurred_at: datetime
    reward_id: str
    role: str


@dataclass(slots=True, unsafe_hash=True)
class SurveyAnswer:
    event_id: str
    occurred_at: datetime
    request_id: str


@dataclass(slots=True, unsafe_hash=True)
class Community:
    event_id: str
    occurred_at: datetime
    activity_id: str
    kind: str


@dataclass(slots=True, unsafe_hash=True)
class Carry:
    """A recalculation kept the customer's tier at ``occurred_at``; normal downgrade rules apply after."""

    event_id: str
    occurred_at: datetime
    tier: str
    program_version: int


Fact = Purchase | Refund | Review | ReferralGrant | ReferralRevoke | SurveyAnswer | Community | Carry

_FACT_KINDS: dict[str, type[Any]] = {
    "purchase": Purchase, "refund": Refund, "review": Review, "referral_grant": ReferralGrant,
    "referral_revoke": ReferralRevoke, "survey": SurveyAnswer, "community": Community, "carry": Carry,
}
_KIND_OF = {cls: kind for kind, cls in _FACT_KINDS.items()}


def fact_kind(fact: Fact) -> str:
    return _KIND_OF[type(fact)]


def _purchase_to_json(fact: Purchase) -> dict[str, Any]:
    return {
        "fact": "purchase", "event_id": fact.event_id, "occurred_at": fact.occurred_at.isoformat(),
        "order_id": fact.order_id, "currency": fact.currency,
        "lines": [[ln.line_id, ln.category, ln.quantity, ln.unit_price_minor] for ln in fact.lines],
    }


def _purchase_from_json(data: dict[str, Any]) -> Purchase:
    return Purchase(
        data["event_id"], datetime.fromisoformat(data["occurred_at"]), data["order_id"], data["currency"],
        tuple(PurchaseLine(str(a), str(b), int(c), int(d)) for a, b, c, d in data["lines"]),
    )


def fact_to_json(fact: Fact) -> dict[str, Any]:
    """A compact JSON-able dict (stored so the ledger can be re-derived under a new program version)."""
    if type(fact) is Purchase:
        return _purchase_to_json(fact)  # the hot kind: no per-field dispatch
    out: dict[str, Any] = {"fact": fact_kind(fact)}
    for name in fact.__slots__:  # type: ignore[union-attr]
        value = getattr(fact, name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif name == "lines":
            value = [list(pair) for pair in value]
        out[name] = value
    return out


def fact_from_json(data: dict[str, Any]) -> Fact:
    cls = _FACT_KINDS[data["fact"]]
    if cls is Purchase:
        return _purchase_from_json(data)
    values: dict[str, Any] = {}
    for name in cls.__slots__:
        value = data[name]
        if name == "occurred_at":
            value = datetime.fromisoformat(value)
        elif name == "lines":
            value = tuple((str(a), int(b)) for a, b in value)
        values[name] = value
    return cls(**values)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------------------

EntryActivity = Literal[
    "purchase", "refund", "review", "referral", "referral_revoked", "survey", "community", "recalculation"
]


@dataclass(slots=True, unsafe_hash=True)
class Entry:
    """One ledger entry per source event. Points count while ``counts_from <= t < expires_at``."""

    entry_id: str  # the source event id
    activity: EntryActivity
    points: int
    counts_from: datetime
    expires_at: datetime
    rule: str  # why: the rule and numbers behind the points, for the explain API
    ref: str  # order id, sku, reward id, ... (what the entry is about)


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def _allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` over lines in proportion to ``weights`` (largest remainder, deterministic)."""
    if len(weights) == 1:  # one line (the common case): it gets everything
        return [total if weights[0] else 0]
    weight_sum = sum(weights)
    if weight_sum == 0 or total == 0:
        return [0] * len(weights)
    if total == weight_sum:  # nothing capped (the common case): each line keeps its own points
        return list(weights)
    shares = [total * w // weight_sum for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % weight_sum), i))
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


class _Expiry:
    """When points earned at a given time leave the qualification window."""

    def __init__(self, window: QualificationWindow, zone: ZoneInfo, member_since: datetime) -> None:
        self.window = window
        self.zone = zone
        self.first = member_since
        self.rolling = timedelta(days=window.days) if window.kind == "rolling_days" and window.days else None

    def __call__(self, earned_at: datetime) -> datetime:
        """In UTC (the instant is what counts): the stored balance changes ahead read back as UTC, so both
        paths give the same datetimes, and same-tzinfo comparisons are the fast ones."""
        if self.rolling is not None:
            return _in_utc(earned_at + self.rolling)
        local = earned_at.astimezone(self.zone)
        if self.window.kind == "calendar_year":
            return datetime(local.year + 1, 1, 1, tzinfo=self.zone).astimezone(UTC)
        # membership_anniversary: the first anniversary of the first activity strictly after earned_at.
        year = local.year
        member_since = self.first.astimezone(self.zone)
        while True:
            anniversary = _anniversary(member_since, year)
            if anniversary > local:
                return anniversary.astimezone(UTC)
            year += 1


def _in_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    """Epoch microseconds (exact; the same for the same instant in any offset)."""
    delta = moment - _EPOCH  # same value as ``// timedelta(microseconds=1)`` without a timedelta division
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _anniversary(start: datetime, year: int) -> datetime:
    day = start.day
    if start.month == 2 and day == 29 and not _is_leap(year):
        day = 28
    return start.replace(year=year, day=day)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


@dataclass(slots=True)
class Derivation:
    """What deriving a customer's facts leaves behind that later facts depend on.

    Enough to derive facts that come later in event time than every known one (``advance``) without the
    known facts: the first activity (membership anniversary), what was already rewarded once (orders,
    products, survey requests, activities, referral rewards), corrections still waiting for their original
    (a refund before its purchase, a revocation before its grant: a matching fact needs the full
    re-derivation), and the caps used on the latest local day and month per activity (facts are applied in
    event-time order, so earlier days never matter again). Each set grows by a short id per rewarded fact.
    """

    member_since: datetime | None = None
    orders: dict[str, str] = field(default_factory=dict)  # order id -> purchase event that booked it
    reviewed: dict[str, str] = field(default_factory=dict)  # sku -> rewarded review event
    answered: set[str] = field(default_factory=set)  # survey request ids
    activities: set[str] = field(default_factory=set)  # community activity ids
    grants: set[str] = field(default_factory=set)  # referral reward ids booked
    open_orders: set[str] = field(default_factory=set)  # refunded before their purchase was seen
    open_rewards: set[str] = field(default_factory=set)  # revoked before their grant was seen
    cap_day: dict[str, tuple[int, int]] = field(default_factory=dict)  # activity -> (local date ordinal, used)
    cap_month: dict[str, tuple[int, int]] = field(default_factory=dict)  # activity -> (year*12+month-1, used)


class _CapBook:
    """Points already credited per activity on the latest local day and month, for the anti-gaming caps.

    Facts are applied in event-time order, so only the latest day and month can still receive points."""

    def __init__(self, program: TiersProgram, zone: ZoneInfo, state: Derivation) -> None:
        self.caps = program.earning.caps
        self.zone = zone
        self.day = state.cap_day
        self.month = state.cap_month

    def take(self, activity: str, at: datetime, wanted: int) -> tuple[int, str]:
        cap = self.caps.get(activity)  # type: ignore[call-overload]
        if cap is None or wanted <= 0:
            return wanted, ""
        local = at.astimezone(self.zone).date()
        day_no = local.toordinal()
        month_no = local.year * 12 + local.month - 1
        day = self.day.get(activity)
        month = self.month.get(activity)
        used_day = day[1] if day is not None and day[0] == day_no else 0
        used_month = month[1] if month is not None and month[0] == month_no else 0
        room = wanted
        if cap.per_day is not None:
            room = min(room, cap.per_day - used_day)
        if cap.per_month is not None:
            room = min(room, cap.per_month - used_month)
        granted = max(0, room)
        self.day[activity] = (day_no, used_day + granted)
        self.month[activity] = (month_no, used_month + granted)
        if granted < wanted:
            return granted, f"; capped from {wanted} (limits per day {cap.per_day}, per month {cap.per_month})"
        return granted, ""


@dataclass(slots=True)
class _BookedOrder:
    purchase: Purchase
    entry: Entry
    line_points: dict[str, int]  # credited points per line id
    line_quantity: dict[str, int]
    refunded_quantity: dict[str, int] = field(default_factory=dict)
    reversed_points: dict[str, int] = field(default_factory=dict)


class _Compiled:
    """What the hot path needs from a program, built once per program object: the purchase rule as exact
    integer ratios with ready-made rule text, and the tiers' positions.

    points = floor(amount_minor * rate * multiplier / scale): with ``rate * multiplier = num / den`` that is
    ``amount_minor * num // (den * scale)``, exact (the Decimal maths it replaces was exact in this range)."""

    def __init__(self, program: TiersProgram) -> None:
        rule = program.earning.purchase
        rate = Fraction(rule.points_per_currency_unit)
        self.excluded = frozenset(rule.excluded_categories)
        self.default = (rate.numerator, rate.denominator)
        self.ratios: dict[str, tuple[int, int]] = {}
        self.suffixes: dict[str, str] = {}
        for category, multiplier in rule.category_multipliers.items():
            combined = rate * Fraction(multiplier)
            self.ratios[category] = (combined.numerator, combined.denominator)
            self.suffixes[category] = f" x{multiplier} ({category})" if multiplier != 1 else ""
        self.prefix = f"{rule.points_per_currency_unit} pt per "
        self.positions = {tier.id: i for i, tier in enumerate(program.ladder)}
        window = program.window
        self.rolling = timedelta(days=window.days) if window.kind == "rolling_days" and window.days else None
        self.thresholds = [tier.threshold for tier in program.ladder]
        self.grace = timedelta(days=program.downgrade.grace_days)
        self.notice = timedelta(days=program.downgrade.notice_days)
        self.overrides: dict[str, list[Override]] = {}
        for override in program.overrides:
            self.overrides.setdefault(override.customer_id, []).append(override)
        # Milestones as exact ratios: reached when (points - low) * den >= num * (high - low).
        self.milestones = [(m, *Fraction(m).as_integer_ratio()) for m in program.milestones]


_COMPILED: dict[int, tuple[TiersProgram, _Compiled]] = {}


def _compiled(program: TiersProgram) -> _Compiled:
    cached = _COMPILED.get(id(program))
    if cached is None or cached[0] is not program:  # the program object is kept, so its id is not reused
        cached = (program, _Compiled(program))
        _COMPILED[id(program)] = cached
    return cached[1]


def tier_positions(program: TiersProgram) -> dict[str, int]:
    """Tier id -> index in the ladder (do not modify)."""
    return _compiled(program).positions


def _sort_key(fact: Fact) -> tuple[datetime, str]:
    return (fact.occurred_at, fact.event_id)


class _Deriver:
    """Applies facts in event-time order to a ``Derivation``; one entry per fact.

    ``full``: also keep what corrections need (the booked orders and grants); the in-order fast path
    (``advance``) never applies corrections, so it skips that."""

    def __init__(self, program: TiersProgram, zone: ZoneInfo, state: Derivation, full: bool) -> None:
        assert state.member_since is not None
        self.rules = program.earning
        self.state = state
        self.full = full
        self.maths = _compiled(program)
        self.rolling = self.maths.rolling
        self.expiry = _Expiry(program.window, zone, state.member_since)
        self.caps = _CapBook(program, zone, state) if program.earning.caps else None
        self.booked: dict[str, _BookedOrder] = {}
        self.granted: dict[str, Entry] = {}
        self.revoked: set[str] = set()

    def _entry(self, fact: Fact, activity: EntryActivity, points: int, rule: str, ref: str) -> Entry:
        at = fact.occurred_at
        return Entry(fact.event_id, activity, points, at,
                     _in_utc(at + self.rolling) if self.rolling is not None else self.expiry(at), rule, ref)

    def _take(self, activity: str, at: datetime, wanted: int) -> tuple[int, str]:
        return (wanted, "") if self.caps is None else self.caps.take(activity, at, wanted)

    def add(self, fact: Fact) -> Entry:
        """An earning fact (anything but a refund or a revocation)."""
        kind = type(fact)
        if kind is Purchase:
            return self._purchase(fact)  # type: ignore[arg-type]
        state = self.state
        rules = self.rules
        if kind is Review:
            assert isinstance(fact, Review)
            rule_r = rules.review
            if fact.sku in state.reviewed:
                return self._entry(fact, "review", 0,
                                   f"product already rewarded (review event {state.reviewed[fact.sku]})", fact.sku)
            if fact.text_length < rule_r.min_text_length:
                return self._entry(fact, "review", 0,
                                   f"text {fact.text_length} chars < {rule_r.min_text_length} required", fact.sku)
            if rule_r.require_photo and not fact.has_photo:
                return self._entry(fact, "review", 0, "a photo is required", fact.sku)
            wanted = rule_r.points + (rule_r.photo_bonus if fact.has_photo else 0)
            credited, cap_note = self._take("review", fact.occurred_at, wanted)
            photo = f" + {rule_r.photo_bonus} photo bonus" if fact.has_photo and rule_r.photo_bonus else ""
            if credited > 0:
                state.reviewed[fact.sku] = fact.event_id
            return self._entry(fact, "review", credited, f"detailed review {rule_r.points}{photo}{cap_note}",
                               fact.sku)
        if kind is ReferralGrant:
            assert isinstance(fact, ReferralGrant)
            rule_f = rules.referral
            if fact.reward_id in state.grants:
                return self._entry(fact, "referral", 0, f"reward {fact.reward_id} already booked", fact.reward_id)
            if fact.role not in rule_f.roles:
                return self._entry(fact, "referral", 0, f"{fact.role} rewards earn no status points", fact.reward_id)
            wanted = rule_f.points if rule_f.points is not None else fact.points
            credited, cap_note = self._take("referral", fact.occurred_at, wanted)
            booked = self._entry(fact, "referral", credited, f"friend who bought ({fact.role}) {wanted}{cap_note}",
                                 fact.reward_id)
            state.grants.add(fact.reward_id)
            if self.full:
                self.granted[fact.reward_id] = booked
            return booked
        if kind is SurveyAnswer:
            assert isinstance(fact, SurveyAnswer)
            if fact.request_id in state.answered:
                return self._entry(fact, "survey", 0, "survey request already rewarded", fact.request_id)
            credited, cap_note = self._take("survey", fact.occurred_at, rules.survey.points)
            state.answered.add(fact.request_id)
            return self._entry(fact, "survey", credited, f"answered survey {rules.survey.points}{cap_note}",
                               fact.request_id)
        if kind is Community:
            assert isinstance(fact, Community)
            if fact.activity_id in state.activities:
                return self._entry(fact, "community", 0, "activity already rewarded", fact.activity_id)
            if fact.kind not in rules.community.points_by_kind:
                return self._entry(fact, "community", 0, f"kind {fact.kind!r} earns no points in this program",
                                   fact.kind)
            wanted = rules.community.points_by_kind[fact.kind]
            credited, cap_note = self._take("community", fact.occurred_at, wanted)
            state.activities.add(fact.activity_id)
            return self._entry(fact, "community", credited, f"community {fact.kind} {wanted}{cap_note}", fact.kind)
        assert isinstance(fact, Carry)
        return self._entry(fact, "recalculation", 0,
                           f"tier {fact.tier} kept when program version {fact.program_version} was applied", fact.tier)

    def _purchase(self, fact: Purchase) -> Entry:
        state = self.state
        first = state.orders.get(fact.order_id)
        if first is not None:
            return self._entry(fact, "purchase", 0, f"order already booked by event {first}", fact.order_id)
        maths = self.maths
        scale = currency_scale(fact.currency)
        line_raw: list[int] = []
        notes: list[str] = []
        for line in fact.lines:
            category = line.category
            if category in maths.excluded:
                line_raw.append(0)
                notes.append(f"{line.line_id}: {category} excluded")
                continue
            num, den = maths.ratios.get(category, maths.default)
            points = max(0, line.unit_price_minor * line.quantity * num // (den * scale))
            line_raw.append(points)
            notes.append(f"{line.line_id}: {points}{maths.suffixes.get(category, '')}")
        credited, cap_note = self._take("purchase", fact.occurred_at, sum(line_raw))
        booked = self._entry(
            fact, "purchase", credited, f"{maths.prefix}{fact.currency}: {', '.join(notes)}{cap_note}", fact.order_id
        )
        state.orders[fact.order_id] = fact.event_id
        if self.full:
            per_line = _allocate(credited, line_raw)
            self.booked[fact.order_id] = _BookedOrder(
                purchase=fact,
                entry=booked,
                line_points={ln.line_id: p for ln, p in zip(fact.lines, per_line, strict=True)},
                line_quantity={ln.line_id: ln.quantity for ln in fact.lines},
            )
        return booked

    def correct(self, fact: Refund | ReferralRevoke) -> Entry:
        """A refund or revocation: reverses what its original earned (all earning facts applied first)."""
        if isinstance(fact, Refund):
            booked = self.booked.get(fact.order_id)
            if booked is None:
                self.state.open_orders.add(fact.order_id)
                return self._entry(fact, "refund", 0,
                                   f"purchase {fact.order_id} not seen yet; reversed when it arrives", fact.order_id)
            wanted_lines = (
                [(line_id, qty) for line_id, qty in booked.line_quantity.items()] if fact.full else fact.lines
            )
            reversed_total = 0
            notes = []
            for line_id, quantity in wanted_lines:
                if line_id not in booked.line_quantity:
                    notes.append(f"{line_id}: unknown line")
                    continue
                bought = booked.line_quantity[line_id]
                refunded = min(bought, booked.refunded_quantity.get(line_id, 0) + quantity)
                booked.refunded_quantity[line_id] = refunded
                # Cumulative floor: partial refunds of a line add up to exactly the line's points.
                target = booked.line_points[line_id] * refunded // bought
                delta = target - booked.reversed_points.get(line_id, 0)
                booked.reversed_points[line_id] = target
                reversed_total += delta
                notes.append(f"{line_id}: -{delta}")
            # A refund dated before its purchase (clock skew) counts from the purchase time.
            counts_from = max(fact.occurred_at, booked.entry.counts_from)
            return Entry(
                fact.event_id, "refund", -reversed_total, counts_from, booked.entry.expires_at,
                ("full refund" if fact.full else "partial refund") + f" of {fact.order_id}: " + ", ".join(notes),
                fact.order_id,
            )
        granted = self.granted.get(fact.reward_id)
        if granted is None:
            self.state.open_rewards.add(fact.reward_id)
            return self._entry(fact, "referral_revoked", 0,
                               f"reward {fact.reward_id} not seen yet; reversed when it arrives", fact.reward_id)
        if fact.reward_id in self.revoked:
            return self._entry(fact, "referral_revoked", 0, f"reward {fact.reward_id} already revoked", fact.reward_id)
        self.revoked.add(fact.reward_id)
        return Entry(
            fact.event_id, "referral_revoked", -granted.points, max(fact.occurred_at, granted.counts_from),
            granted.expires_at, f"referral reward {fact.reward_id} revoked", fact.reward_id,
        )


def derive(
    program: TiersProgram, facts: Iterable[Fact], zone: ZoneInfo | None = None
) -> tuple[list[Entry], Derivation]:
    """The full derivation: one entry per fact, in event-time order, and the ``Derivation`` it leaves.

    Deterministic in the set of facts. Corrections (refunds, revocations) go second: they reverse what was
    booked, whatever arrived first."""
    zone = zone or program.zone()
    ordered = sorted(facts, key=_sort_key)
    if not ordered:
        return [], Derivation()
    state = Derivation(member_since=ordered[0].occurred_at)
    deriver = _Deriver(program, zone, state, full=True)
    entries: dict[str, Entry] = {}
    corrections: list[Refund | ReferralRevoke] = []
    for fact in ordered:
        if isinstance(fact, Refund | ReferralRevoke):
            corrections.append(fact)
        else:
            entries[fact.event_id] = deriver.add(fact)
    for correction in corrections:
        entries[correction.event_id] = deriver.correct(correction)
    return [entries[f.event_id] for f in ordered], state


def derive_ledger(program: TiersProgram, facts: Iterable[Fact], zone: ZoneInfo | None = None) -> list[Entry]:
    """One entry per fact, in event-time order; deterministic in the set of facts."""
    return derive(program, facts, zone)[0]


def balance_at(entries: Iterable[Entry], at: datetime) -> int:
    """Status points in the window at ``at``: the reference definition the walk must agree with."""
    return sum(e.points for e in entries if e.counts_from <= at < e.expires_at)


# --------------------------------------------------------------------------------------------------
# Tier state
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class PendingDowngrade:
    to_tier: int
    since: datetime  # when the balance first stopped supporting the tier
    effective_at: datetime
    notice_at: datetime


@dataclass(slots=True, unsafe_hash=True)
class TierState:
    as_of: datetime
    tier: int  # index in the ladder
    since: datetime | None  # when the tier was entered (None: never left the bottom)
    reason: str  # why the last change happened
    points: int
    pending: PendingDowngrade | None
    next_check_at: datetime | None  # when time alone may change something (expiry, grace, override)
    # Balance changes still ahead of ``as_of`` (epoch microseconds, delta), sorted: what ``advance_state``
    # continues from. Integers: stored and read back per event without building a datetime for each.
    future: tuple[tuple[int, int], ...] = ()


def _override_at(overrides: Sequence[Override], at: datetime) -> Override | None:
    found = None
    for override in overrides:
        if override.starts_at <= at < override.expires_at:
            found = override
    return found


def _deltas(entries: Iterable[Entry]) -> list[tuple[datetime, int]]:
    deltas: list[tuple[datetime, int]] = []
    for e in entries:
        if e.points and e.counts_from < e.expires_at:
            deltas.append((e.counts_from, e.points))
            deltas.append((e.expires_at, -e.points))
    return deltas


def evaluate(
    program: TiersProgram,
    customer_id: str,
    entries: Sequence[Entry],
    as_of: datetime,
    carries: Sequence[Carry] = (),
) -> TierState:
    """Tier state at ``as_of`` from the customer's ledger, walking event time from the first entry."""
    overrides = _compiled(program).overrides.get(customer_id, ())
    deltas = _deltas(entries)
    deltas.sort()  # by time (the order within one instant does not matter), so the future part is sorted
    carry_at: dict[datetime, int] = {}
    for c in carries:
        if c.tier in _tier_ids(program):
            carry_at[c.occurred_at] = max(carry_at.get(c.occurred_at, 0), program.tier_index(c.tier))

    moments: set[datetime] = {as_of}
    moments.update(t for t, _ in deltas if t <= as_of)
    moments.update(t for t in carry_at if t <= as_of)
    for o in overrides:
        moments.update(t for t in (o.starts_at, o.expires_at) if t <= as_of)
    return _walk(program, overrides, deltas, (), carry_at, as_of, moments, 0, 0, None, "start", None)


def advance_state(program: TiersProgram, customer_id: str, state: TierState, new_entries: Sequence[Entry],
                  as_of: datetime) -> TierState:
    """``evaluate`` continued from ``state`` (the walk up to ``state.as_of``) with entries that all count
    from later than ``state.as_of``: the same walk over the moments in (state.as_of, as_of] only.

    ``state.future`` holds the balance changes still ahead of ``state.as_of`` (expiries), so the walk does
    not need the older entries. Agreement with ``evaluate`` is property-tested."""
    after = state.as_of
    overrides = _compiled(program).overrides.get(customer_id, ())
    # Only the known changes due by ``as_of`` become datetimes; the rest stays as stored.
    known = state.future
    deltas = _deltas(new_entries)
    due_count = 0
    if known:
        as_of_us = micros(as_of)
        if known[0][0] <= as_of_us:  # (usually nothing known is due yet)
            due_count = bisect_right(known, (as_of_us, _MAX_DELTA))
            deltas += [(from_micros(t), d) for t, d in known[:due_count]]
    deltas.sort()
    moments: set[datetime] = {as_of}
    for t, _ in deltas:
        if t > as_of:
            break
        if t > after:
            moments.add(t)
    for o in overrides:
        moments.update(t for t in (o.starts_at, o.expires_at) if after < t <= as_of)
    pending = state.pending
    if pending is not None and pending.effective_at <= as_of:
        moments.add(pending.effective_at)  # the full walk pushed it when the downgrade became pending
    return _walk(program, overrides, deltas, known[due_count:], {}, as_of, moments, state.points, state.tier,
                 state.since, state.reason, pending)


_MAX_DELTA = 2**63  # sorts after every (time, delta) pair of the same time


def _walk(
    program: TiersProgram,
    overrides: Sequence[Override],
    deltas: list[tuple[datetime, int]],
    later: tuple[tuple[int, int], ...],
    carry_at: dict[datetime, int],
    as_of: datetime,
    moments: set[datetime],
    balance: int,
    tier: int,
    since: datetime | None,
    reason: str,
    pending: PendingDowngrade | None,
) -> TierState:
    policy = program.downgrade
    compiled = _compiled(program)
    grace = compiled.grace
    notice = compiled.notice
    thresholds = compiled.thresholds
    heap = list(moments)
    if len(heap) > 1:
        heapq.heapify(heap)
    cursor = 0
    last: datetime | None = None

    def pending_from(t: datetime, current: int, target: int) -> PendingDowngrade:
        to = max(current - 1, target) if policy.policy == "one_step" else target
        effective = t + grace
        return PendingDowngrade(to, t, effective, max(t, effective - notice))

    while heap:
        t = heapq.heappop(heap)
        if t == last:
            continue
        last = t
        while cursor < len(deltas) and deltas[cursor][0] <= t:
            balance += deltas[cursor][1]
            cursor += 1
        if carry_at and t in carry_at and carry_at[t] > tier:
            tier, since, reason = carry_at[t], t, "kept_at_recalculation"
        supported = 0
        for i, threshold in enumerate(thresholds):
            if balance >= threshold:
                supported = i
        override = _override_at(overrides, t) if overrides else None
        if override is not None and override.mode == "fixed":
            fixed = program.tier_index(override.tier)
            if fixed != tier:
                tier, since, reason = fixed, t, "override_fixed"
            pending = None
            continue
        floor = program.tier_index(override.tier) if override is not None else 0
        target = max(supported, floor)
        if target > tier:
            tier, since = target, t
            reason = "override_floor" if floor > supported else "threshold_reached"
            pending = None
        elif target == tier or policy.policy == "none":
            pending = None
        else:
            if pending is None:
                pending = pending_from(t, tier, target)
            else:
                pending = replace(pending, to_tier=pending_from(t, tier, target).to_tier)
            while pending is not None and pending.effective_at <= t:
                tier, since, reason = pending.to_tier, t, "grace_expired"
                pending = pending_from(t, tier, target) if target < tier else None
            if pending is not None and pending.effective_at <= as_of:
                heapq.heappush(heap, pending.effective_at)

    # ``later``: known balance changes after ``as_of`` (epoch microseconds), not walked; the walked ones
    # still ahead join them.
    future = later
    if cursor < len(deltas):
        ahead = tuple([(micros(t), d) for t, d in deltas[cursor:]])
        future = (later + ahead) if not later or ahead[0] >= later[-1] else tuple(sorted(later + ahead))
    # Next moment when time alone may change the state (drives the durable check timer).
    candidates: list[datetime] = []
    if pending is not None:
        candidates += [t for t in (pending.notice_at, pending.effective_at) if t > as_of]
    if policy.policy != "none" and tier > 0:
        first_drop = next((t for t, d in future if d < 0), None)
        if first_drop is not None:
            candidates.append(from_micros(first_drop))
    for o in overrides:
        candidates += [t for t in (o.starts_at, o.expires_at) if t > as_of]
    candidates += [t for t in carry_at if t > as_of]
    return TierState(
        as_of=as_of, tier=tier, since=since, reason=reason, points=balance, pending=pending,
        next_check_at=min(candidates) if candidates else None, future=future,
    )


def _tier_ids(program: TiersProgram) -> set[str]:
    return {tier.id for tier in program.ladder}


# --------------------------------------------------------------------------------------------------
# Progress, actions, expiry
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Progress:
    next_tier: int | None
    points_needed: int
    fraction: Decimal  # 0..1 of the way from the current tier's threshold to the next one


def progress(program: TiersProgram, state: TierState) -> Progress:
    if state.tier + 1 >= len(program.ladder):
        return Progress(None, 0, Decimal(1))
    low = program.ladder[state.tier].threshold
    high = program.ladder[state.tier + 1].threshold
    fraction = Decimal(min(max(state.points - low, 0), high - low)) / Decimal(high - low)
    return Progress(state.tier + 1, max(0, high - state.points), fraction)


def milestones_reached(program: TiersProgram, state: TierState) -> frozenset[Decimal]:
    current = progress(program, state)
    if current.next_tier is None:
        return frozenset()
    return frozenset(m for m in program.milestones if current.fraction >= m)


@dataclass(slots=True, unsafe_hash=True)
class Action:
    code: str  # review_with_photo, review, referral, survey, community:<kind>, spend
    points: int  # points one such action earns
    times_needed: int  # how many of them close the gap alone
    spend_minor: int | None = None  # for "spend": amount in minor units that closes the gap


def next_actions(program: TiersProgram, state: TierState, currency: str) -> list[Action]:
    """Ways to close the gap to the next tier, ranked: fewest repetitions first, then most points."""
    gap = progress(program, state).points_needed
    if gap <= 0:
        return []
    rules = program.earning
    options: list[tuple[str, int]] = []
    if rules.review.points or rules.review.photo_bonus:
        options.append(("review_with_photo", rules.review.points + rules.review.photo_bonus))
        if not rules.review.require_photo and rules.review.photo_bonus:
            options.append(("review", rules.review.points))
    if rules.referral.points:
        options.append(("referral", rules.referral.points))
    if rules.survey.points:
        options.append(("survey", rules.survey.points))
    for kind, points in rules.community.points_by_kind.items():
        if points:
            options.append((f"community:{kind}", points))
    actions = [Action(code, points, -(-gap // points)) for code, points in options if points > 0]
    rate = rules.purchase.points_per_currency_unit
    if rate > 0:
        spend = Decimal(gap) * currency_scale(currency) / rate
        actions.append(Action("spend", gap, 1, -_floor(-spend)))
    actions.sort(key=lambda a: (a.times_needed, -a.points, a.code))
    return actions


@dataclass(slots=True, unsafe_hash=True)
class Expiring:
    expires_at: datetime
    points: int


def expiring_soon(entries: Iterable[Entry], as_of: datetime, days: int) -> list[Expiring]:
    """Points in the window now that leave it within ``days``, grouped by expiry time."""
    horizon = as_of + timedelta(days=days)
    by_time: dict[datetime, int] = {}
    for e in entries:
        if e.counts_from <= as_of < e.expires_at <= horizon:
            by_time[e.expires_at] = by_time.get(e.expires_at, 0) + e.points
    return [Expiring(t, p) for t, p in sorted(by_time.items()) if p > 0]


# --------------------------------------------------------------------------------------------------
# What was announced, and what to announce now
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Snapshot:
    """What the service last told the world about a customer (persisted next to the ledger)."""

    tier: str
    milestones: frozenset[Decimal] = frozenset()
    notice_for: datetime | None = None  # effective_at of the downgrade already announced


@dataclass(slots=True, unsafe_hash=True)
class TierChange:
    from_tier: str
    to_tier: str
    direction: Literal["up", "down"]
    reason: str
    effective_at: datetime
    points: int


@dataclass(slots=True, unsafe_hash=True)
class Milestone:
    tier: str
    next_tier: str
    fraction: Decimal
    points: int
    points_needed: int
    at: datetime | None = field(default=None, compare=False)  # the evaluation that reached it (event time)


@dataclass(slots=True, unsafe_hash=True)
class DowngradeNotice:
    from_tier: str
    to_tier: str
    effective_at: datetime
    points_needed: int
    at: datetime | None = field(default=None, compare=False)  # the evaluation that announced it (event time)


Effect = TierChange | Milestone | DowngradeNotice


def _rank(program: TiersProgram, tier_id: str) -> int:
    try:
        return program.tier_index(tier_id)
    except KeyError:
        return -1  # a tier that no longer exists in this version ranks below every tier


_NONE_REACHED: frozenset[Decimal] = frozenset()


def diff(
    program: TiersProgram, before: Snapshot | None, state: TierState, reason: str | None = None
) -> tuple[list[Effect], Snapshot]:
    """Effects that bring the world from ``before`` to ``state``, and the snapshot to store."""
    effects: list[Effect] = []
    ladder = program.ladder
    before_tier = before.tier if before is not None else ladder[0].id
    now_tier = ladder[state.tier].id
    same_tier = before_tier == now_tier
    if not same_tier:
        direction: Literal["up", "down"] = "up" if state.tier > _rank(program, before_tier) else "down"
        effects.append(TierChange(
            before_tier, now_tier, direction, reason or state.reason, state.since or state.as_of, state.points
        ))
    # Milestones: the fractions of the way to the next tier reached (``progress``'s fraction, compared as
    # exact integer ratios instead of Decimal division).
    compiled = _compiled(program)
    tier = state.tier
    reached: frozenset[Decimal] = _NONE_REACHED
    if tier + 1 < len(ladder) and compiled.milestones:
        low = compiled.thresholds[tier]
        high = compiled.thresholds[tier + 1]
        progressed = min(max(state.points - low, 0), high - low)
        reached = frozenset([m for m, num, den in compiled.milestones if progressed * den >= num * (high - low)])
        already = before.milestones if before is not None and same_tier else _NONE_REACHED
        for fraction in sorted(reached - already):
            effects.append(Milestone(now_tier, ladder[tier + 1].id, fraction, state.points,
                                     max(0, high - state.points), state.as_of))
        if already:
            reached = reached | already
    elif before is not None and same_tier:
        reached = before.milestones
    notice_for: datetime | None = None
    pending = state.pending
    if pending is not None:
        announced = before is not None and same_tier and before.notice_for == pending.effective_at
        if announced:
            notice_for = pending.effective_at
        elif pending.notice_at <= state.as_of:
            effects.append(DowngradeNotice(
                now_tier, ladder[pending.to_tier].id, pending.effective_at,
                max(0, ladder[state.tier].threshold - state.points), state.as_of,
            ))
            notice_for = pending.effective_at
    return effects, Snapshot(now_tier, reached, notice_for)


# --------------------------------------------------------------------------------------------------
# One customer, end to end
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Outcome:
    entries: list[Entry]  # every entry (full derivation) or only the new facts' entries (``advance``)
    state: TierState
    effects: list[Effect]
    snapshot: Snapshot
    new_facts: list[Fact] = field(default_factory=list)  # facts the rules added (recalculation carries)
    derivation: Derivation | None = None  # what later in-order facts need (``advance``)


def _split(facts: Iterable[Fact]) -> tuple[list[Fact], list[Carry]]:
    facts = list(facts)
    return facts, [f for f in facts if isinstance(f, Carry)]


def process(
    program: TiersProgram,
    customer_id: str,
    facts: Iterable[Fact],
    before: Snapshot | None,
    as_of: datetime,
    zone: ZoneInfo | None = None,
) -> Outcome:
    """Derive the ledger, evaluate at ``as_of`` and diff against what was announced (the reference path)."""
    all_facts, carries = _split(facts)
    entries, derivation = derive(program, all_facts, zone)
    state = evaluate(program, customer_id, entries, as_of, carries)
    effects, snapshot = diff(program, before, state)
    return Outcome(entries, state, effects, snapshot, derivation=derivation)


def _advanceable(derivation: Derivation, state: TierState, new_facts: Sequence[Fact], as_of: datetime) -> bool:
    """``advance``'s condition: every new fact an earning fact dated strictly after ``state.as_of``, none
    completing a correction that arrived before its original, and ``as_of`` not before ``state.as_of``."""
    after = state.as_of
    if as_of < after:
        return False
    for fact in new_facts:
        kind = type(fact)
        if kind is Refund or kind is ReferralRevoke or kind is Carry or fact.occurred_at <= after:
            return False
        if kind is Purchase and fact.order_id in derivation.open_orders:  # type: ignore[union-attr]
            return False
        if kind is ReferralGrant and fact.reward_id in derivation.open_rewards:  # type: ignore[union-attr]
            return False
    return True


def _by_moment(facts: Sequence[Fact]) -> list[list[Fact]]:
    """Facts in event-time order (ties by event id), grouped by the instant they happened at."""
    groups: list[list[Fact]] = []
    for fact in sorted(facts, key=_sort_key):
        if groups and groups[-1][0].occurred_at == fact.occurred_at:
            groups[-1].append(fact)
        else:
            groups.append([fact])
    return groups


def advance_each(
    program: TiersProgram,
    customer_id: str,
    derivation: Derivation,
    state: TierState,
    new_facts: Sequence[Fact],
    before: Snapshot | None,
    as_of: datetime,
    zone: ZoneInfo | None = None,
) -> Outcome | None:
    """``advance`` one moment at a time: each instant's facts evaluated at their own time, the last at
    ``as_of``. Entries, state and derivation are those of one ``advance`` over all of them; the effects and
    the snapshot (what was announced) are every step's, as live traffic delivering the facts one batch each
    would have produced them (two promotions in a row are two TierChanged, each tier's milestones are
    announced), so what a customer is told does not depend on how in-order facts were batched. Property-
    tested against ``process`` run once per moment. None when ``advance`` would refuse the facts."""
    if len(new_facts) <= 1:  # the common case (one event per customer per batch): one step
        return advance(program, customer_id, derivation, state, new_facts, before, as_of, zone)
    if not _advanceable(derivation, state, new_facts, as_of):
        return None
    moments = _by_moment(new_facts)
    if len(moments) == 1:
        return advance(program, customer_id, derivation, state, new_facts, before, as_of, zone)
    entries: list[Entry] = []
    effects: list[Effect] = []
    snapshot = before
    for i, group in enumerate(moments):
        at = as_of if i == len(moments) - 1 else group[0].occurred_at
        step = advance(program, customer_id, derivation, state, group, snapshot, at, zone)
        assert step is not None  # _advanceable held for all of them, and each step moves forward in time
        entries += step.entries
        effects += step.effects
        state, snapshot = step.state, step.snapshot
    assert snapshot is not None
    return Outcome(entries, state, effects, snapshot, derivation=derivation)


def process_each(
    program: TiersProgram,
    customer_id: str,
    facts: Sequence[Fact],
    before: Snapshot | None,
    as_of: datetime,
    zone: ZoneInfo | None = None,
) -> Outcome:
    """``process`` for a customer's first facts, step by step like ``advance_each`` when they allow it (the
    first moment derived in full, the rest advanced); otherwise ``process`` of them all at once."""
    moments = _by_moment(facts) if len(facts) > 1 else []
    if len(moments) > 1:
        first = process(program, customer_id, moments[0], before, moments[0][0].occurred_at, zone)
        rest = [f for group in moments[1:] for f in group]
        if first.derivation is not None:
            later = advance_each(program, customer_id, first.derivation, first.state, rest, first.snapshot, as_of,
                                 zone)
            if later is not None:
                return Outcome(first.entries + later.entries, later.state, first.effects + later.effects,
                               later.snapshot, derivation=later.derivation)
    return process(program, customer_id, facts, before, as_of, zone)


def advance(
    program: TiersProgram,
    customer_id: str,
    derivation: Derivation,
    state: TierState,
    new_facts: Sequence[Fact],
    before: Snapshot | None,
    as_of: datetime,
    zone: ZoneInfo | None = None,
) -> Outcome | None:
    """The in-order fast path: ``process`` of the known facts plus ``new_facts``, from what the known facts
    left (``derivation``, updated in place, and ``state``, the evaluation at ``state.as_of``), without them.

    Only when the result cannot differ from the full re-derivation: every new fact is an earning fact
    (no refund, revocation or carry) dated strictly after ``state.as_of`` (so after every known fact), and
    none completes a correction that arrived before its original. Otherwise None: the caller re-derives
    from all facts with ``process``. ``new_facts`` must not repeat an event id. Returns only the new
    facts' entries. Agreement with ``process`` (entries, state, effects, derivation) is property-tested.
    """
    if not _advanceable(derivation, state, new_facts, as_of):
        return None
    entries: list[Entry] = []
    if new_facts:
        ordered = sorted(new_facts, key=_sort_key) if len(new_facts) > 1 else new_facts
        if derivation.member_since is None:
            derivation.member_since = ordered[0].occurred_at
        deriver = _Deriver(program, zone or program.zone(), derivation, full=False)
        entries = [deriver.add(fact) for fact in ordered]
    new_state = advance_state(program, customer_id, state, entries, as_of)
    effects, snapshot = diff(program, before, new_state)
    return Outcome(entries, new_state, effects, snapshot, derivation=derivation)


def recalculate(
    program: TiersProgram,
    customer_id: str,
    facts: Iterable[Fact],
    before: Snapshot | None,
    as_of: datetime,
    zone: ZoneInfo | None = None,
) -> Outcome:
    """Replay a customer's facts under ``program`` (a new version) and report only what changes.

    With ``downgrade.recalculation: with_grace`` a tier the new version no longer supports is kept at
    ``as_of`` (a Carry fact) and the normal downgrade policy runs from there: grace, advance notice.
    """
    all_facts, carries = _split(facts)
    entries, derivation = derive(program, all_facts, zone)
    state = evaluate(program, customer_id, entries, as_of, carries)
    new_facts: list[Fact] = []
    if (
        before is not None
        and program.downgrade.recalculation == "with_grace"
        and _rank(program, before.tier) > state.tier
    ):
        carry = Carry(f"recalc:{customer_id}:v{program.version}", as_of, before.tier, program.version)
        new_facts.append(carry)
        entries, derivation = derive(program, [*all_facts, carry], zone)
        state = evaluate(program, customer_id, entries, as_of, [*carries, carry])
    effects, snapshot = diff(program, before, state, reason="program_changed")
    return Outcome(entries, state, effects, snapshot, new_facts, derivation)

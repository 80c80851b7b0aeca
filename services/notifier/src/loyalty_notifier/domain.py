"""Every business decision of the notifier: plain functions over plain data (no I/O, clock or randomness).

Handlers and the sender loop read state, call these functions and persist what they return. Time is always
passed in (event time in handlers, the sender's clock in the sender loop); randomness (retry jitter) too.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Category(StrEnum):
    """Consent categories. Transactional messages are never capped or budgeted."""

    TRANSACTIONAL = "transactional"
    SERVICE = "service"
    MARKETING = "marketing"
    SURVEY = "survey"


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    TELEGRAM = "telegram"
    WEBHOOK = "webhook"


class SuppressionReason(StrEnum):
    UNKNOWN_CUSTOMER = "unknown_customer"
    NO_CONSENT = "no_consent"
    NO_REACHABLE_CHANNEL = "no_reachable_channel"
    CONTACT_BUDGET = "contact_budget"
    FREQUENCY_CAP = "frequency_cap"
    JOURNEY_EXITED = "journey_exited"
    JOURNEY_ENDED = "journey_ended"
    JOURNEY_PATH_CHANGED = "journey_path_changed"
    STEP_ALREADY_SENT = "step_already_sent"
    ENDPOINT_DISABLED = "endpoint_disabled"


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # HTTP 5xx / 429, timeouts: the same channel may work later
    UNAVAILABLE = "unavailable"  # connection refused, channel not configured: try the next channel now
    PERMANENT = "permanent"  # rejected recipient, HTTP 4xx: retrying the same channel cannot help


# Namespace for deterministic ids (journey step messages), so a redelivered timer maps to the same id.
NOTIFIER_NAMESPACE = uuid.UUID("6f1c1d0e-4b8a-4f53-9a55-2f1e8c9b7a10")

CHANNEL_CONTACT_FIELDS: Mapping[Channel, str] = {
    Channel.EMAIL: "email",
    Channel.SMS: "phone",
    Channel.TELEGRAM: "telegram_chat_id",
}


# ------------------------------------------------------------------------------------------------------------
# Contacts and preferences
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consent:
    granted: bool
    at: datetime


K = TypeVar("K")


@dataclass(frozen=True)
class CustomerProfile:
    """What the notifier knows about a customer. Consents are last-writer-wins by event time, so
    CustomerRegistered and ConsentChanged arriving out of order (different topics) converge."""

    customer_id: str
    name: str | None = None
    locale: str | None = None
    timezone: str | None = None
    contacts: Mapping[Channel, str] = field(default_factory=dict)
    consents: Mapping[Category, Consent] = field(default_factory=dict)
    # A ConsentChanged naming one channel overrides the category's consent on that channel only.
    channel_consents: Mapping[tuple[Category, Channel], Consent] = field(default_factory=dict)
    registered_at: datetime | None = None

    def allows(self, category: Category, channel: Channel | None = None) -> bool:
        """Opt-in semantics: no recorded consent means no message. The newest decision wins between
        the category-wide consent and the category-on-this-channel one."""
        decision = self.consents.get(category)
        if channel is not None:
            override = self.channel_consents.get((category, channel))
            if override is not None and (decision is None or override.at >= decision.at):
                decision = override
        return decision is not None and decision.granted


def _merge_newer(current: Mapping[K, Consent], key: K, consent: Consent) -> dict[K, Consent]:
    merged = dict(current)
    existing = merged.get(key)
    if existing is None or consent.at >= existing.at:
        merged[key] = consent
    return merged


def apply_registration(
    profile: CustomerProfile | None,
    *,
    customer_id: str,
    name: str,
    locale: str,
    timezone: str,
    contacts: Mapping[Channel, str | None],
    consents: Mapping[Category, bool],
    at: datetime,
) -> CustomerProfile:
    base = profile or CustomerProfile(customer_id=customer_id)
    merged: Mapping[Category, Consent] = base.consents
    for category, granted in consents.items():
        merged = _merge_newer(merged, category, Consent(granted, at))
    # Contacts from a (re-)registration replace the old ones: the retailer knows the current addresses.
    return replace(
        base,
        name=name,
        locale=locale,
        timezone=timezone,
        contacts={ch: v for ch, v in contacts.items() if v},
        consents=merged,
        registered_at=min(base.registered_at, at) if base.registered_at else at,
    )


def apply_consent_change(
    profile: CustomerProfile | None,
    *,
    customer_id: str,
    category: Category,
    channel: Channel | None,
    granted: bool,
    at: datetime,
) -> CustomerProfile:
    """A change for a category on every channel (channel None) or on one channel."""
    base = profile or CustomerProfile(customer_id=customer_id)
    consent = Consent(granted, at)
    if channel is None:
        return replace(base, consents=_merge_newer(base.consents, category, consent))
    return replace(base, channel_consents=_merge_newer(base.channel_consents, (category, channel), consent))


# ------------------------------------------------------------------------------------------------------------
# Quiet hours
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    categories: frozenset[Category]

    def in_window(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # wraps midnight


def zone(name: str | None, fallback: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or fallback)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


def release_after_quiet_hours(due_at: datetime, tz: ZoneInfo, quiet: QuietHours | None, category: Category) -> datetime:
    """The time a message may go out: unchanged outside quiet hours, else the end of the window in the
    customer's zone (a quiet message is deferred, never dropped)."""
    if quiet is None or category not in quiet.categories:
        return due_at
    local = due_at.astimezone(tz)
    if not quiet.in_window(local.time().replace(tzinfo=None)):
        return due_at
    end_date = local.date()
    if quiet.start > quiet.end and local.time().replace(tzinfo=None) >= quiet.start:
        end_date = end_date + timedelta(days=1)
    release = datetime.combine(end_date, quiet.end, tzinfo=tz)
    # A window end inside a DST gap does not exist locally: round-trip through UTC gives the real instant.
    release_utc = release.astimezone(ZoneInfo("UTC"))
    return max(release_utc, due_at)


# ------------------------------------------------------------------------------------------------------------
# Routing: event → message plan
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutePolicy:
    template: str
    category: Category
    channels: tuple[Channel, ...]


@dataclass(frozen=True)
class PlannedDelivery:
    """One planned message on its first channel; `fallbacks` are the next channels in order (failover)."""

    channel: Channel
    recipient: str
    fallbacks: tuple[tuple[Channel, str], ...]
    due_at: datetime
    category: Category
    template: str
    locale: str


@dataclass(frozen=True)
class Suppressed:
    reason: SuppressionReason
    detail: str = ""


def still_allowed(profile: CustomerProfile | None, category: Category, channel: Channel) -> Suppressed | None:
    """Checked again when a planned message is about to go out: a consent withdrawn while the message
    waited (quiet hours, a retry, a journey step) wins over the plan."""
    if profile is not None and not profile.allows(category, channel):
        return Suppressed(SuppressionReason.NO_CONSENT, f"{category.value} on {channel.value} withdrawn before sending")
    return None


def pick_locale(profile_locale: str | None, supported: Sequence[str], default: str) -> str:
    if profile_locale:
        if profile_locale in supported:
            return profile_locale
        language = profile_locale.replace("_", "-").split("-")[0].lower()
        if language in supported:
            return language
    return default


def plan_message(
    route: RoutePolicy,
    profile: CustomerProfile | None,
    *,
    occurred_at: datetime,
    configured_channels: Iterable[Channel],
    quiet: QuietHours | None,
    supported_locales: Sequence[str],
    default_locale: str,
    default_timezone: str,
) -> PlannedDelivery | Suppressed:
    """Decide whether, where and when one customer message goes out."""
    if profile is None or profile.registered_at is None:
        return Suppressed(SuppressionReason.UNKNOWN_CUSTOMER, "no CustomerRegistered seen for this customer")
    configured = set(configured_channels)
    consented = [ch for ch in route.channels if profile.allows(route.category, ch)]
    if not consented:
        return Suppressed(SuppressionReason.NO_CONSENT, f"no opt-in for {route.category.value}")
    reachable = [(ch, profile.contacts[ch]) for ch in consented if ch in configured and profile.contacts.get(ch)]
    if not reachable:
        return Suppressed(
            SuppressionReason.NO_REACHABLE_CHANNEL,
            "no contact on " + ",".join(c.value for c in consented),
        )
    tz = zone(profile.timezone, default_timezone)
    first_channel, first_recipient = reachable[0]
    return PlannedDelivery(
        channel=first_channel,
        recipient=first_recipient,
        fallbacks=tuple(reachable[1:]),
        due_at=release_after_quiet_hours(occurred_at, tz, quiet, route.category),
        category=route.category,
        template=route.template,
        locale=pick_locale(profile.locale, supported_locales, default_locale),
    )


def recipient_hash(recipient: str, key: bytes) -> str:
    """What events carry instead of a contact: a keyed hash, so partners can correlate but never read it."""
    return hmac.new(key, recipient.strip().lower().encode(), hashlib.sha256).hexdigest()


def notification_id(tenant: str, source_event_id: str, channel: Channel, recipient: str) -> str:
    """Stable id of one (source event, recipient, channel) message; also the provider idempotency key."""
    return str(uuid.uuid5(NOTIFIER_NAMESPACE, f"{tenant}/{source_event_id}/{channel.value}/{recipient}"))


# ------------------------------------------------------------------------------------------------------------
# Contact budget and frequency caps (enforced at send time: see docs/CONTACT_BUDGET.md)
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactRecord:
    """One message that reached the customer (one per source event, whatever the channel)."""

    sent_at: datetime
    category: Category


@dataclass(frozen=True)
class ContactBudget:
    max_messages: int
    per_days: int
    marketing_reserve: int = 1


@dataclass(frozen=True)
class FrequencyCap:
    category: Category
    max_messages: int
    per_days: int


def budget_decision(
    category: Category,
    history: Iterable[ContactRecord],
    now: datetime,
    budget: ContactBudget | None,
    caps: Iterable[FrequencyCap],
) -> Suppressed | None:
    """None = may send. Transactional is never suppressed; marketing may not use the reserved slots, so
    when the budget runs low marketing is suppressed first and service / survey messages still fit."""
    if category is Category.TRANSACTIONAL:
        return None
    records = list(history)
    for cap in caps:
        if cap.category is not category:
            continue
        since = now - timedelta(days=cap.per_days)
        used = sum(1 for r in records if r.category is category and since < r.sent_at <= now)
        if used >= cap.max_messages:
            return Suppressed(
                SuppressionReason.FREQUENCY_CAP,
                f"{used} {category.value} messages in {cap.per_days} days (cap {cap.max_messages})",
            )
    if budget is not None:
        since = now - timedelta(days=budget.per_days)
        used = sum(1 for r in records if r.category is not Category.TRANSACTIONAL and since < r.sent_at <= now)
        limit = budget.max_messages - (budget.marketing_reserve if category is Category.MARKETING else 0)
        if used >= limit:
            return Suppressed(
                SuppressionReason.CONTACT_BUDGET,
                f"{used} messages in {budget.per_days} days (limit {limit} for {category.value})",
            )
    return None


# ------------------------------------------------------------------------------------------------------------
# Failures, retries, failover
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    at: datetime


@dataclass(frozen=True)
class Failover:
    channel: Channel
    recipient: str
    fallbacks: tuple[tuple[Channel, str], ...]


@dataclass(frozen=True)
class GiveUp:
    reason: str


def retry_delay(attempts_made: int, schedule: Sequence[int], jitter_fraction: float, rnd: float) -> timedelta:
    """Delay after the `attempts_made`-th failed attempt; rnd in [0, 1) spreads retries ±jitter_fraction."""
    base = schedule[min(attempts_made, len(schedule)) - 1]
    factor = 1.0 + jitter_fraction * (2.0 * rnd - 1.0)
    return timedelta(seconds=base * factor)


def decide_after_failure(
    kind: FailureKind,
    *,
    attempts_made: int,
    schedule: Sequence[int],
    jitter_fraction: float,
    rnd: float,
    now: datetime,
    fallbacks: tuple[tuple[Channel, str], ...],
    error: str,
) -> Retry | Failover | GiveUp:
    """After a failed attempt: retry the same channel later, move to the next channel now, or give up.
    An unavailable or rejecting channel fails over at once (waiting hours would not help the customer);
    a transient error is retried on the schedule, and fails over only when the schedule is exhausted."""
    if attempts_made < 1:
        raise ValueError("attempts_made counts the attempt that just failed, so it is >= 1")
    can_failover = bool(fallbacks)
    if kind in (FailureKind.PERMANENT, FailureKind.UNAVAILABLE) and can_failover:
        (channel, recipient), rest = fallbacks[0], fallbacks[1:]
        return Failover(channel, recipient, rest)
    if kind is FailureKind.PERMANENT:
        return GiveUp(f"rejected: {error}")
    if attempts_made <= len(schedule):
        return Retry(now + retry_delay(attempts_made, schedule, jitter_fraction, rnd))
    if can_failover:
        (channel, recipient), rest = fallbacks[0], fallbacks[1:]
        return Failover(channel, recipient, rest)
    return GiveUp(f"{attempts_made} attempts failed; last: {error}")


def decide_after_lost_lease(channel: Channel, now: datetime) -> Retry | GiveUp:
    """A row claimed by a sender that vanished (crash mid-send): the message may or may not have gone out.
    Webhooks carry a stable webhook-id that receivers dedupe on, so they are resent; for email/SMS/Telegram a
    second copy cannot be recalled, so 'at most once' wins and the outcome is reported as unknown."""
    if channel is Channel.WEBHOOK:
        return Retry(now)
    return GiveUp("outcome unknown: the sender stopped during the attempt; not resent to avoid a duplicate")


@dataclass(frozen=True)
class EndpointHealth:
    consecutive_failures: int
    disabled: bool


def endpoint_after_attempt(health: EndpointHealth, *, succeeded: bool, disable_after: int) -> EndpointHealth:
    if succeeded:
        return EndpointHealth(0, health.disabled)
    failures = health.consecutive_failures + 1
    return EndpointHealth(failures, health.disabled or failures >= disable_after)


def reenable_endpoint(_: EndpointHealth) -> EndpointHealth:
    return EndpointHealth(0, False)


# ------------------------------------------------------------------------------------------------------------
# Per-provider rate limit (token bucket; the sender owns the clock)
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenBucket:
    rate_per_second: float
    capacity: float
    tokens: float
    updated_at: float  # monotonic seconds


def new_bucket(rate_per_second: float, now: float, burst: float | None = None) -> TokenBucket:
    capacity = burst if burst is not None else max(1.0, rate_per_second)
    return TokenBucket(rate_per_second, capacity, capacity, now)


def take_token(bucket: TokenBucket, now: float) -> tuple[TokenBucket, float]:
    """Take one token; returns the new bucket and how long to wait before sending (0 = now)."""
    elapsed = max(0.0, now - bucket.updated_at)
    tokens = min(bucket.capacity, bucket.tokens + elapsed * bucket.rate_per_second) - 1.0
    wait = 0.0 if tokens >= 0 else -tokens / bucket.rate_per_second
    return replace(bucket, tokens=tokens, updated_at=max(now, bucket.updated_at)), wait


# ------------------------------------------------------------------------------------------------------------
# Journeys (durable multi-step sequences; steps are timers, each step at most once per customer)
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSpec:
    step: str
    after_days: int
    template: str
    channels: tuple[Channel, ...] | None = None


@dataclass(frozen=True)
class BranchSpec:
    when_categories: frozenset[str]
    to_path: str


@dataclass(frozen=True)
class TriggerSpec:
    when_categories: frozenset[str]
    then: StepSpec


@dataclass(frozen=True)
class JourneySpec:
    name: str
    start_on: str  # "CustomerRegistered" or "PurchaseMade" (the first purchase)
    category: Category
    max_days: int
    channels: tuple[Channel, ...]
    paths: Mapping[str, tuple[StepSpec, ...]]
    branches: tuple[BranchSpec, ...] = ()
    triggers: tuple[TriggerSpec, ...] = ()


@dataclass(frozen=True)
class JourneyState:
    journey: str
    customer_id: str
    started_at: datetime
    path: str
    path_entered_at: datetime
    exited_at: datetime | None = None
    exit_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.exited_at is None


TRIGGER_PATH = "*"  # timers of trigger steps are valid on any path


@dataclass(frozen=True)
class StepTimer:
    journey: str
    customer_id: str
    path: str
    step: str
    template: str
    due_at: datetime

    @property
    def key(self) -> str:
        # One timer per (customer, journey, path, step): rescheduling the same step is a no-op.
        return f"{self.customer_id}/{self.journey}/{self.path}/{self.step}"


def journey_ends_at(spec: JourneySpec, state: JourneyState) -> datetime:
    return state.started_at + timedelta(days=spec.max_days)


def _path_timers(spec: JourneySpec, state: JourneyState) -> list[StepTimer]:
    ends = journey_ends_at(spec, state)
    timers = []
    for step in spec.paths[state.path]:
        due = state.path_entered_at + timedelta(days=step.after_days)
        if due <= ends:
            timers.append(StepTimer(spec.name, state.customer_id, state.path, step.step, step.template, due))
    return timers


def start_journey(
    spec: JourneySpec, existing: JourneyState | None, customer_id: str, at: datetime
) -> tuple[JourneyState, list[StepTimer]]:
    """Start once: a second CustomerRegistered (re-registration, replay) does not restart the journey."""
    if existing is not None:
        return existing, []
    state = JourneyState(spec.name, customer_id, at, "default", at)
    return state, _path_timers(spec, state)


def journey_on_purchase(
    spec: JourneySpec, state: JourneyState, product_categories: Iterable[str], at: datetime
) -> tuple[JourneyState, list[StepTimer]]:
    """A purchase may move the customer to another path (branch) and/or schedule a trigger step."""
    if not state.active or at >= journey_ends_at(spec, state) or at < state.started_at:
        return state, []
    bought = set(product_categories)
    timers: list[StepTimer] = []
    new_state = state
    for branch in spec.branches:
        if bought & branch.when_categories and branch.to_path != state.path:
            new_state = replace(state, path=branch.to_path, path_entered_at=at)
            timers.extend(_path_timers(spec, new_state))
            break
    ends = journey_ends_at(spec, new_state)
    for trigger in spec.triggers:
        if bought & trigger.when_categories:
            due = at + timedelta(days=trigger.then.after_days)
            if due <= ends:
                timers.append(
                    StepTimer(
                        spec.name,
                        state.customer_id,
                        TRIGGER_PATH,
                        trigger.then.step,
                        trigger.then.template,
                        due,
                    )
                )
    return new_state, timers


def journey_on_event(
    spec: JourneySpec,
    state: JourneyState | None,
    *,
    customer_id: str,
    event_name: str,
    product_categories: Iterable[str],
    at: datetime,
) -> tuple[JourneyState | None, list[StepTimer]]:
    """Start on the start event; later purchases branch or trigger. The starting purchase fires triggers
    (bought a drill → tool check) but never branches: day 0 of the default path is what a newcomer gets."""
    if state is None:
        if event_name != spec.start_on:
            return None, []
        state, timers = start_journey(spec, None, customer_id, at)
        if event_name == "PurchaseMade":
            bought = set(product_categories)
            ends = journey_ends_at(spec, state)
            for trigger in spec.triggers:
                due = at + timedelta(days=trigger.then.after_days)
                if bought & trigger.when_categories and due <= ends:
                    timers.append(
                        StepTimer(spec.name, customer_id, TRIGGER_PATH, trigger.then.step, trigger.then.template, due)
                    )
        return state, timers
    if event_name == "PurchaseMade":
        return journey_on_purchase(spec, state, product_categories, at)
    return state, []


def journey_on_consent(spec: JourneySpec, state: JourneyState, profile: CustomerProfile, at: datetime) -> JourneyState:
    """Opting out of the journey's category exits the journey for good."""
    if state.active and not profile.allows(spec.category):
        return replace(state, exited_at=at, exit_reason=f"opted out of {spec.category.value}")
    return state


def step_decision(
    spec: JourneySpec, state: JourneyState | None, timer: StepTimer, sent_steps: Iterable[str]
) -> StepSpec | Suppressed:
    """When a step's timer fires: the step to send, or why not."""
    if state is None or not state.active:
        return Suppressed(SuppressionReason.JOURNEY_EXITED, (state.exit_reason or "") if state else "no journey")
    if timer.due_at > journey_ends_at(spec, state):
        return Suppressed(SuppressionReason.JOURNEY_ENDED, f"after day {spec.max_days}")
    if timer.step in set(sent_steps):
        return Suppressed(SuppressionReason.STEP_ALREADY_SENT, timer.step)
    if timer.path == TRIGGER_PATH:
        for trigger in spec.triggers:
            if trigger.then.step == timer.step:
                return trigger.then
        return Suppressed(SuppressionReason.JOURNEY_PATH_CHANGED, f"trigger step {timer.step} no longer exists")
    if timer.path != state.path:
        return Suppressed(SuppressionReason.JOURNEY_PATH_CHANGED, f"now on path {state.path}")
    for step in spec.paths.get(state.path, ()):
        if step.step == timer.step:
            return step
    return Suppressed(SuppressionReason.JOURNEY_PATH_CHANGED, f"step {timer.step} not on path {state.path}")


def journey_message_id(tenant: str, customer_id: str, journey: str, step: str) -> str:
    """The stable source id of a journey step's message: the delivery table's unique key then guarantees
    the step reaches the customer at most once, whatever redelivers the timer."""
    return str(uuid.uuid5(NOTIFIER_NAMESPACE, f"{tenant}/{customer_id}/{journey}/{step}"))

"""Pure notifier rules: consents, routing, quiet hours, budget, retries/failover, rate limits, journeys."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loyalty_notifier.domain import (
    BranchSpec,
    Category,
    Channel,
    ContactBudget,
    ContactRecord,
    CustomerProfile,
    EndpointHealth,
    Failover,
    FailureKind,
    FrequencyCap,
    GiveUp,
    JourneySpec,
    PlannedDelivery,
    QuietHours,
    Retry,
    RoutePolicy,
    StepSpec,
    StepTimer,
    Suppressed,
    SuppressionReason,
    TriggerSpec,
    apply_consent_change,
    apply_registration,
    budget_decision,
    decide_after_failure,
    decide_after_lost_lease,
    endpoint_after_attempt,
    journey_message_id,
    journey_on_consent,
    journey_on_event,
    new_bucket,
    pick_locale,
    plan_message,
    reenable_endpoint,
    release_after_quiet_hours,
    retry_delay,
    step_decision,
    take_token,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")
ALL_CHANNELS = (Channel.EMAIL, Channel.SMS, Channel.TELEGRAM)
SCHEDULE = (5, 300, 1800, 7200, 18000, 36000)


def registered(**overrides: object) -> CustomerProfile:
    kwargs: dict = {
        "customer_id": "c1",
        "name": "Anna Schmidt",
        "locale": "en",
        "timezone": "Europe/Berlin",
        "contacts": {Channel.EMAIL: "anna@example.com", Channel.SMS: "+491701234567", Channel.TELEGRAM: "42"},
        "consents": {
            Category.TRANSACTIONAL: True,
            Category.SERVICE: True,
            Category.MARKETING: False,
            Category.SURVEY: True,
        },
        "at": T0,
    }
    kwargs.update(overrides)
    return apply_registration(None, **kwargs)


def plan(route: RoutePolicy, profile: CustomerProfile | None, at: datetime = T0, **kw: object):
    args: dict = {
        "occurred_at": at,
        "configured_channels": ALL_CHANNELS,
        "quiet": None,
        "supported_locales": ("en", "ru"),
        "default_locale": "en",
        "default_timezone": "Europe/Berlin",
    }
    args.update(kw)
    return plan_message(route, profile, **args)


# ---------------------------------------------------------------------------------------------- consents


def test_registration_consents_are_opt_in_per_category() -> None:
    profile = registered()
    assert profile.allows(Category.SERVICE)
    assert not profile.allows(Category.MARKETING)
    assert profile.allows(Category.SURVEY, Channel.SMS)


def test_channel_specific_withdrawal_only_blocks_that_channel() -> None:
    profile = apply_consent_change(
        registered(),
        customer_id="c1",
        category=Category.SURVEY,
        channel=Channel.SMS,
        granted=False,
        at=T0 + timedelta(hours=1),
    )
    assert not profile.allows(Category.SURVEY, Channel.SMS)
    assert profile.allows(Category.SURVEY, Channel.EMAIL)
    # A later category-wide grant applies to every channel again (newest decision wins).
    profile = apply_consent_change(
        profile, customer_id="c1", category=Category.SURVEY, channel=None, granted=True, at=T0 + timedelta(hours=2)
    )
    assert profile.allows(Category.SURVEY, Channel.SMS)


consent_events = st.lists(
    st.tuples(
        st.sampled_from(list(Category)),
        st.sampled_from([None, *ALL_CHANNELS]),
        st.booleans(),
        st.integers(min_value=0, max_value=10_000),  # distinct-ish event times in minutes
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda e: e[3],
)


@given(consent_events)
@settings(max_examples=150)
def test_consent_state_is_independent_of_arrival_order(events: list) -> None:
    """CustomerRegistered and ConsentChanged come from different topics; any arrival order converges."""
    finals = []
    for order in itertools.islice(itertools.permutations(events), 24):
        profile = registered()
        for category, channel, granted, minute in order:
            profile = apply_consent_change(
                profile,
                customer_id="c1",
                category=category,
                channel=channel,
                granted=granted,
                at=T0 + timedelta(minutes=minute + 1),
            )
        finals.append({(c, ch): profile.allows(c, ch) for c in Category for ch in (None, *ALL_CHANNELS)})
    assert all(f == finals[0] for f in finals)


def test_consent_change_before_registration_is_kept_when_newer() -> None:
    early = apply_consent_change(
        None, customer_id="c1", category=Category.MARKETING, channel=None, granted=True, at=T0 + timedelta(days=1)
    )
    profile = apply_registration(
        early,
        customer_id="c1",
        name="Anna",
        locale="en",
        timezone="Europe/Berlin",
        contacts={Channel.EMAIL: "a@example.com"},
        consents={Category.MARKETING: False},
        at=T0,
    )
    assert profile.allows(Category.MARKETING)
    assert profile.registered_at == T0


# ---------------------------------------------------------------------------------------------- routing

ROUTE = RoutePolicy("tier_changed", Category.SERVICE, (Channel.EMAIL, Channel.TELEGRAM, Channel.SMS))


def test_plan_uses_channels_in_order_with_fallbacks() -> None:
    result = plan(ROUTE, registered())
    assert isinstance(result, PlannedDelivery)
    assert (result.channel, result.recipient) == (Channel.EMAIL, "anna@example.com")
    assert result.fallbacks == ((Channel.TELEGRAM, "42"), (Channel.SMS, "+491701234567"))
    assert result.due_at == T0 and result.locale == "en"


def test_plan_skips_channels_without_contact_or_configuration() -> None:
    profile = registered(contacts={Channel.SMS: "+491701234567", Channel.TELEGRAM: "42"})
    result = plan(ROUTE, profile, configured_channels=(Channel.EMAIL, Channel.SMS))
    assert isinstance(result, PlannedDelivery)
    assert result.channel is Channel.SMS and result.fallbacks == ()


def test_plan_suppresses_with_reasons() -> None:
    assert plan(ROUTE, None) == Suppressed(
        SuppressionReason.UNKNOWN_CUSTOMER, "no CustomerRegistered seen for this customer"
    )
    marketing = RoutePolicy("promo", Category.MARKETING, (Channel.EMAIL,))
    result = plan(marketing, registered())
    assert isinstance(result, Suppressed) and result.reason is SuppressionReason.NO_CONSENT
    nothing = plan(ROUTE, registered(contacts={}))
    assert isinstance(nothing, Suppressed) and nothing.reason is SuppressionReason.NO_REACHABLE_CHANNEL


def test_locale_falls_back_to_language_then_default() -> None:
    assert pick_locale("ru-RU", ("en", "ru"), "en") == "ru"
    assert pick_locale("de", ("en", "ru"), "en") == "en"
    assert pick_locale(None, ("en", "ru"), "ru") == "ru"


# ---------------------------------------------------------------------------------------------- quiet hours

QUIET = QuietHours(time(21, 0), time(8, 0), frozenset({Category.SERVICE, Category.MARKETING, Category.SURVEY}))


def test_quiet_hours_defer_to_the_window_end_in_the_customers_zone() -> None:
    late = datetime(2026, 3, 2, 22, 30, tzinfo=BERLIN)  # 22:30 Berlin
    released = release_after_quiet_hours(late.astimezone(UTC), BERLIN, QUIET, Category.SERVICE)
    assert released == datetime(2026, 3, 3, 8, 0, tzinfo=BERLIN)
    early = datetime(2026, 3, 3, 6, 15, tzinfo=BERLIN)
    assert release_after_quiet_hours(early, BERLIN, QUIET, Category.SERVICE) == datetime(
        2026, 3, 3, 8, 0, tzinfo=BERLIN
    )
    # Transactional messages are not held.
    assert release_after_quiet_hours(late, BERLIN, QUIET, Category.TRANSACTIONAL) == late


def test_plan_applies_quiet_hours_in_the_customers_zone() -> None:
    profile = registered(timezone="Asia/Tokyo")
    at = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 23:00 in Tokyo, 15:00 in Berlin
    result = plan(ROUTE, profile, at=at, quiet=QUIET)
    assert isinstance(result, PlannedDelivery)
    assert result.due_at == datetime(2026, 3, 3, 8, 0, tzinfo=ZoneInfo("Asia/Tokyo"))


ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Lord_Howe", "UTC", "America/St_Johns"]


@given(
    moment=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)),
    zone_name=st.sampled_from(ZONES),
    start=st.times(),
    end=st.times(),
    category=st.sampled_from(list(Category)),
)
@settings(max_examples=400)
def test_quiet_hours_release_properties(
    moment: datetime, zone_name: str, start: time, end: time, category: Category
) -> None:
    if start == end:
        return
    quiet = QuietHours(start, end, frozenset({Category.SERVICE, Category.MARKETING, Category.SURVEY}))
    tz = ZoneInfo(zone_name)
    released = release_after_quiet_hours(moment, tz, quiet, category)
    assert released >= moment  # deferred, never earlier
    assert released - moment <= timedelta(hours=26)  # at most one window (+ a DST hour)
    local_moment = moment.astimezone(tz).time()
    if category is Category.TRANSACTIONAL or not quiet.in_window(local_moment):
        assert released == moment
    else:
        assert not quiet.in_window(released.astimezone(tz).time())  # never delivered inside the window


# ---------------------------------------------------------------------------------------------- budget and caps

BUDGET = ContactBudget(max_messages=4, per_days=7, marketing_reserve=1)
CAPS = (FrequencyCap(Category.MARKETING, 2, 7), FrequencyCap(Category.SURVEY, 1, 14))


def history_of(*days_and_categories: tuple[int, Category]) -> list[ContactRecord]:
    return [ContactRecord(T0 - timedelta(days=d), c) for d, c in days_and_categories]


def test_budget_suppresses_marketing_before_service() -> None:
    used = history_of((1, Category.SERVICE), (2, Category.SERVICE), (3, Category.SURVEY))
    marketing = budget_decision(Category.MARKETING, used, T0, BUDGET, ())
    assert isinstance(marketing, Suppressed) and marketing.reason is SuppressionReason.CONTACT_BUDGET
    assert budget_decision(Category.SERVICE, used, T0, BUDGET, ()) is None
    full = [*used, ContactRecord(T0 - timedelta(hours=1), Category.SERVICE)]
    service = budget_decision(Category.SERVICE, full, T0, BUDGET, ())
    assert isinstance(service, Suppressed) and service.reason is SuppressionReason.CONTACT_BUDGET


def test_budget_window_forgets_old_messages_and_transactional_ones() -> None:
    old = history_of((8, Category.SERVICE), (9, Category.SERVICE), (10, Category.SERVICE), (11, Category.SERVICE))
    transactional = history_of(*((0, Category.TRANSACTIONAL),) * 10)
    assert budget_decision(Category.SERVICE, old + transactional, T0, BUDGET, ()) is None


def test_frequency_cap_per_category() -> None:
    survey = budget_decision(Category.SURVEY, history_of((10, Category.SURVEY)), T0, BUDGET, CAPS)
    assert isinstance(survey, Suppressed) and survey.reason is SuppressionReason.FREQUENCY_CAP
    assert budget_decision(Category.SURVEY, history_of((15, Category.SURVEY)), T0, BUDGET, CAPS) is None


history_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=20 * 24), st.sampled_from(list(Category))), max_size=12
)


@given(history_strategy, st.integers(min_value=1, max_value=6), st.integers(min_value=0, max_value=5))
@settings(max_examples=300)
def test_budget_properties(raw: list[tuple[int, Category]], max_messages: int, reserve: int) -> None:
    if reserve >= max_messages:
        return
    budget = ContactBudget(max_messages, 7, reserve)
    history = [ContactRecord(T0 - timedelta(hours=h), c) for h, c in raw]
    # Transactional messages are never suppressed.
    assert budget_decision(Category.TRANSACTIONAL, history, T0, budget, CAPS) is None
    # Marketing goes first: whenever a service or survey message is out of budget, so is marketing.
    for category in (Category.SERVICE, Category.SURVEY):
        decision = budget_decision(category, history, T0, budget, ())
        if decision is not None:
            assert budget_decision(Category.MARKETING, history, T0, budget, ()) is not None
    # Sending while allowed never exceeds the budget inside the window.
    sent = list(history)
    for _ in range(max_messages + 2):
        if budget_decision(Category.SERVICE, sent, T0, budget, ()) is None:
            sent.append(ContactRecord(T0, Category.SERVICE))
    in_window = [r for r in sent if r.category is not Category.TRANSACTIONAL and r.sent_at > T0 - timedelta(days=7)]
    already = len(in_window) - (len(sent) - len(history))
    assert len(in_window) <= max(max_messages, already)


# ---------------------------------------------------------------------------------------------- retries / failover


def test_transient_failures_retry_on_schedule_then_give_up() -> None:
    outcomes = [
        decide_after_failure(
            FailureKind.TRANSIENT,
            attempts_made=n,
            schedule=SCHEDULE,
            jitter_fraction=0.0,
            rnd=0.5,
            now=T0,
            fallbacks=(),
            error="HTTP 500",
        )
        for n in range(1, len(SCHEDULE) + 2)
    ]
    assert [o.at - T0 for o in outcomes[:-1] if isinstance(o, Retry)] == [timedelta(seconds=s) for s in SCHEDULE]
    assert isinstance(outcomes[-1], GiveUp) and "7 attempts" in outcomes[-1].reason


def test_unavailable_channel_fails_over_at_once_and_exhausted_retries_fail_over() -> None:
    fallbacks = ((Channel.TELEGRAM, "42"), (Channel.SMS, "+49170"))
    down = decide_after_failure(
        FailureKind.UNAVAILABLE,
        attempts_made=1,
        schedule=SCHEDULE,
        jitter_fraction=0.2,
        rnd=0.1,
        now=T0,
        fallbacks=fallbacks,
        error="connection refused",
    )
    assert down == Failover(Channel.TELEGRAM, "42", ((Channel.SMS, "+49170"),))
    exhausted = decide_after_failure(
        FailureKind.TRANSIENT,
        attempts_made=7,
        schedule=SCHEDULE,
        jitter_fraction=0.2,
        rnd=0.1,
        now=T0,
        fallbacks=fallbacks,
        error="HTTP 503",
    )
    assert isinstance(exhausted, Failover) and exhausted.channel is Channel.TELEGRAM
    rejected = decide_after_failure(
        FailureKind.PERMANENT,
        attempts_made=1,
        schedule=SCHEDULE,
        jitter_fraction=0.2,
        rnd=0.1,
        now=T0,
        fallbacks=(),
        error="HTTP 400",
    )
    assert isinstance(rejected, GiveUp)
    alone_down = decide_after_failure(
        FailureKind.UNAVAILABLE,
        attempts_made=1,
        schedule=SCHEDULE,
        jitter_fraction=0.0,
        rnd=0.1,
        now=T0,
        fallbacks=(),
        error="connection refused",
    )
    assert alone_down == Retry(T0 + timedelta(seconds=5))


@given(
    st.integers(min_value=1, max_value=10),
    st.floats(min_value=0, max_value=1),
    st.floats(min_value=0, max_value=0.999999),
)
def test_retry_delay_stays_within_jitter_bounds(attempt: int, jitter: float, rnd: float) -> None:
    delay = retry_delay(attempt, SCHEDULE, jitter, rnd).total_seconds()
    base = SCHEDULE[min(attempt, len(SCHEDULE)) - 1]
    assert base * (1 - jitter) - 1e-6 <= delay <= base * (1 + jitter) + 1e-6
    assert delay >= 0


@given(st.lists(st.sampled_from(list(FailureKind)), min_size=1, max_size=30), st.integers(0, 2))
def test_every_failure_sequence_ends(kinds: list[FailureKind], n_fallbacks: int) -> None:
    """Whatever fails, a message ends in at most (channels × (schedule + 1)) attempts."""
    fallbacks = tuple((Channel.SMS, f"+4917{i}") for i in range(n_fallbacks))
    attempts, total = 0, 0
    for kind in itertools.cycle(kinds):
        attempts += 1
        total += 1
        assert total <= (n_fallbacks + 1) * (len(SCHEDULE) + 1)
        outcome = decide_after_failure(
            kind,
            attempts_made=attempts,
            schedule=SCHEDULE,
            jitter_fraction=0.2,
            rnd=0.5,
            now=T0,
            fallbacks=fallbacks,
            error="x",
        )
        if isinstance(outcome, GiveUp):
            break
        if isinstance(outcome, Failover):
            fallbacks, attempts = outcome.fallbacks, 0


def test_lost_lease_resends_only_idempotent_webhooks() -> None:
    assert decide_after_lost_lease(Channel.WEBHOOK, T0) == Retry(T0)
    assert isinstance(decide_after_lost_lease(Channel.EMAIL, T0), GiveUp)


def test_endpoint_disabled_after_consecutive_failures_and_reenabled() -> None:
    health = EndpointHealth(0, False)
    for _ in range(2):
        health = endpoint_after_attempt(health, succeeded=False, disable_after=3)
    health = endpoint_after_attempt(health, succeeded=True, disable_after=3)
    assert health == EndpointHealth(0, False)  # success resets the streak
    for _ in range(3):
        health = endpoint_after_attempt(health, succeeded=False, disable_after=3)
    assert health.disabled
    assert endpoint_after_attempt(health, succeeded=True, disable_after=3).disabled  # stays off until re-enabled
    assert reenable_endpoint(health) == EndpointHealth(0, False)


@given(st.floats(min_value=0.5, max_value=500), st.integers(min_value=1, max_value=300))
def test_token_bucket_never_exceeds_its_rate(rate: float, n: int) -> None:
    bucket = new_bucket(rate, now=0.0)
    now, send_times = 0.0, []
    for _ in range(n):
        bucket, wait = take_token(bucket, now)
        now += wait
        send_times.append(now)
    # n sends need at least (n - burst) / rate seconds.
    assert send_times[-1] >= (n - bucket.capacity) / rate - 1e-6


# ---------------------------------------------------------------------------------------------- journeys

JOURNEY = JourneySpec(
    name="onboarding",
    start_on="PurchaseMade",
    category=Category.SERVICE,
    max_days=100,
    channels=(Channel.EMAIL,),
    paths={
        "default": (StepSpec("day0", 0, "d0"), StepSpec("day7", 7, "d7"), StepSpec("day30", 30, "d30")),
        "active": (StepSpec("active_welcome", 0, "aw"), StepSpec("day30", 21, "d30")),
    },
    branches=(BranchSpec(frozenset({"accessories"}), "active"),),
    triggers=(TriggerSpec(frozenset({"tools"}), StepSpec("tool_check", 3, "tc")),),
)


def start(categories: tuple[str, ...] = ("paint",)):
    state, timers = journey_on_event(
        JOURNEY, None, customer_id="c1", event_name="PurchaseMade", product_categories=categories, at=T0
    )
    assert state is not None
    return state, timers


def test_journey_starts_on_first_purchase_with_day_offsets() -> None:
    state, timers = start()
    assert state.path == "default"
    assert [(t.step, (t.due_at - T0).days) for t in timers] == [("day0", 0), ("day7", 7), ("day30", 30)]
    again, more = journey_on_event(
        JOURNEY,
        state,
        customer_id="c1",
        event_name="PurchaseMade",
        product_categories=("paint",),
        at=T0 + timedelta(days=1),
    )
    assert again == state and more == []  # a second purchase does not restart it
    none, nothing = journey_on_event(
        JOURNEY, None, customer_id="c1", event_name="CustomerRegistered", product_categories=(), at=T0
    )
    assert none is None and nothing == []


def test_starting_purchase_triggers_but_does_not_branch() -> None:
    state, timers = start(("tools", "accessories"))
    assert state.path == "default"
    assert ("tool_check", 3) in [(t.step, (t.due_at - T0).days) for t in timers]


def test_branch_moves_path_and_old_timers_are_skipped() -> None:
    state, timers = start()
    day7 = next(t for t in timers if t.step == "day7")
    moved, new_timers = journey_on_event(
        JOURNEY,
        state,
        customer_id="c1",
        event_name="PurchaseMade",
        product_categories=("accessories",),
        at=T0 + timedelta(days=2),
    )
    assert moved is not None and moved.path == "active"
    assert [(t.step, t.due_at - T0) for t in new_timers] == [
        ("active_welcome", timedelta(days=2)),
        ("day30", timedelta(days=23)),
    ]
    skipped = step_decision(JOURNEY, moved, day7, sent_steps=["day0"])
    assert isinstance(skipped, Suppressed) and skipped.reason is SuppressionReason.JOURNEY_PATH_CHANGED
    # day30 exists on both paths: once sent, never again.
    day30 = next(t for t in new_timers if t.step == "day30")
    assert step_decision(JOURNEY, moved, day30, sent_steps=[]) == StepSpec("day30", 21, "d30")
    again = step_decision(JOURNEY, moved, day30, sent_steps=["day30"])
    assert isinstance(again, Suppressed) and again.reason is SuppressionReason.STEP_ALREADY_SENT


def test_opting_out_exits_the_journey_for_good() -> None:
    state, timers = start()
    profile = apply_consent_change(
        registered(),
        customer_id="c1",
        category=Category.SERVICE,
        channel=None,
        granted=False,
        at=T0 + timedelta(days=1),
    )
    exited = journey_on_consent(JOURNEY, state, profile, T0 + timedelta(days=1))
    assert not exited.active
    decision = step_decision(JOURNEY, exited, timers[1], sent_steps=[])
    assert isinstance(decision, Suppressed) and decision.reason is SuppressionReason.JOURNEY_EXITED
    after, more = journey_on_event(
        JOURNEY,
        exited,
        customer_id="c1",
        event_name="PurchaseMade",
        product_categories=("accessories",),
        at=T0 + timedelta(days=2),
    )
    assert after == exited and more == []


def test_nothing_is_scheduled_after_the_journeys_end() -> None:
    state, _ = start()
    late, timers = journey_on_event(
        JOURNEY,
        state,
        customer_id="c1",
        event_name="PurchaseMade",
        product_categories=("accessories",),
        at=T0 + timedelta(days=90),
    )
    assert late is not None and late.path == "active"
    assert [t.step for t in timers] == ["active_welcome"]  # day30 of the new path would be day 111
    stale = StepTimer("onboarding", "c1", "active", "day30", "d30", T0 + timedelta(days=111))
    ended = step_decision(JOURNEY, late, stale, sent_steps=[])
    assert isinstance(ended, Suppressed) and ended.reason is SuppressionReason.JOURNEY_ENDED


@given(st.lists(st.tuples(st.integers(0, 120), st.sampled_from(["paint", "tools", "accessories"])), max_size=8))
def test_each_step_is_decided_to_send_at_most_once(purchases: list[tuple[int, str]]) -> None:
    """Replay every timer a journey ever schedules, in due order, redelivered twice: each step sends once."""
    state, timers = start()
    for day, category in sorted(purchases):
        state, more = journey_on_event(
            JOURNEY,
            state,
            customer_id="c1",
            event_name="PurchaseMade",
            product_categories=(category,),
            at=T0 + timedelta(days=day, hours=1),
        )
        timers += more
    assert state is not None
    sent: list[str] = []
    for timer in sorted(timers * 2, key=lambda t: t.due_at):
        decision = step_decision(JOURNEY, state, timer, sent)
        if isinstance(decision, StepSpec):
            sent.append(decision.step)
    assert len(sent) == len(set(sent))


def test_journey_message_id_is_stable_per_customer_and_step() -> None:
    a = journey_message_id("acme", "c1", "onboarding", "day7")
    assert a == journey_message_id("acme", "c1", "onboarding", "day7")
    assert a != journey_message_id("acme", "c2", "onboarding", "day7")
    assert a != journey_message_id("acme", "c1", "onboarding", "day30")


@pytest.mark.parametrize("zone_name", ["Nowhere/Atlantis", None, ""])
def test_unknown_zone_falls_back_to_the_tenant_zone(zone_name: str | None) -> None:
    profile = registered(timezone=zone_name)
    at = datetime(2026, 3, 2, 21, 30, tzinfo=BERLIN)
    result = plan(ROUTE, profile, at=at, quiet=QUIET)
    assert isinstance(result, PlannedDelivery)
    assert result.due_at == datetime(2026, 3, 3, 8, 0, tzinfo=BERLIN)


def test_consent_is_checked_again_before_sending() -> None:
    from loyalty_notifier.domain import still_allowed

    profile = registered()
    assert still_allowed(profile, Category.SERVICE, Channel.EMAIL) is None
    withdrawn = apply_consent_change(
        profile,
        customer_id="c1",
        category=Category.SERVICE,
        channel=Channel.EMAIL,
        granted=False,
        at=T0 + timedelta(hours=1),
    )
    decision = still_allowed(withdrawn, Category.SERVICE, Channel.EMAIL)
    assert isinstance(decision, Suppressed) and decision.reason is SuppressionReason.NO_CONSENT
    assert still_allowed(withdrawn, Category.SERVICE, Channel.SMS) is None  # only that channel

"""Thin handlers: decode → domain → persist (set-based, see store.py) → emit (kit outbox).

One batch handler takes every consumed event type and works through the batch by type in causal order
(facts about customers and orders, then triggers, answers, resolutions, improvements, delivery reports),
with a fixed number of SQL statements per step, so a batch costs the same few round trips at any size.
Timer handlers send due surveys, follow-ups and deadline escalations.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from loyalty_contracts.base import Event
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events import notifier as notifier_events
from loyalty_contracts.events import retail, tiers
from loyalty_contracts.events import surveys as out
from loyalty_contracts.registry import EVENT_TYPES
from loyalty_kit.effects import EffectContext
from loyalty_kit.timers import Timer
from prometheus_client import Gauge

from loyalty_surveys import domain, store
from loyalty_surveys.business_hours import BusinessCalendar
from loyalty_surveys.program import AccountFact, SurveyKind, SurveysProgram

log = logging.getLogger(__name__)

SURVEY_DUE = "survey-due"
FOLLOW_UP_DUE = "follow-up-due"
CASE_DEADLINE = "case-deadline"
NPS_REFRESH = "nps-refresh"
NPS_REFRESH_DELAY = timedelta(minutes=1)  # at most one refresh query per tenant and minute of answers
NPS_WINDOW = timedelta(days=30)

# Delivery reports about these of our events mean the survey link never reached the customer.
REQUEST_EVENT_TYPES = frozenset({out.SurveyRequested.ce_type(), out.FollowUpRequested.ce_type()})
# Lines that say nothing about what the customer bought (segment category ignores them).
NON_PRODUCT_CATEGORIES = frozenset({retail.DELIVERY_FEE_CATEGORY, retail.GIFT_CARD_CATEGORY})

E = TypeVar("E", bound=Event)


def consumed_event_types() -> list[str]:
    types: list[type[Event]] = [
        retail.CustomerRegistered,
        tiers.TierChanged,
        retail.PurchaseMade,
        retail.DeliveryCompleted,
        retail.ConsultationCompleted,
        retail.SurveyAnswered,
        retail.CaseResolved,
        retail.ImprovementShipped,
        notifier_events.NotificationFailed,
    ]
    names = [t.ce_type() for t in types]
    # The notifier may publish budget suppressions as their own event type; take it when it exists.
    if "loyalty.NotificationSuppressed.v1" in EVENT_TYPES:
        names.append("loyalty.NotificationSuppressed.v1")
    return names


def _payload(env: Envelope, model: type[E]) -> E:
    """The envelope's event as `model`. Batches are grouped by ce_type and each ce_type decodes to one model,
    so this only tells the type checker what the grouping already guarantees."""
    data = env.data
    if not isinstance(data, model):
        raise TypeError(f"{env.type} {env.id}: expected {model.__name__}, got {type(data).__name__}")
    return data


class MissingTokenSecret(RuntimeError):
    """The environment variable the program names for a tenant's token secret is not set."""


class UnknownTenant(LookupError):
    """An event for a tenant without a surveys program."""


class UnknownRequest(LookupError):
    """An answer names a survey request this service never made."""


@dataclass(frozen=True)
class TenantConfig:
    tenant: str
    program: SurveysProgram
    calendar: BusinessCalendar
    default_locale: str
    secrets: tuple[bytes, ...]  # first signs, all verify (rotation)

    @property
    def signing_secret(self) -> bytes:
        return self.secrets[0]


def tenant_configs(
    programs: Mapping[str, SurveysProgram], default_locales: Mapping[str, str], environ: Mapping[str, str] = os.environ
) -> dict[str, TenantConfig]:
    """Build per-tenant settings; a missing token secret stops the service at start, naming the variable.

    The variable may hold several comma-separated secrets: the first signs new links, all verify (rotation).
    """
    configs: dict[str, TenantConfig] = {}
    missing: list[str] = []
    for tenant, program in programs.items():
        raw = environ.get(program.answer_token.secret_env, "")
        secrets = tuple(s.strip().encode() for s in raw.split(",") if s.strip())
        if not secrets:
            missing.append(f"{tenant}: {program.answer_token.secret_env}")
            continue
        configs[tenant] = TenantConfig(
            tenant=tenant,
            program=program,
            calendar=program.business_hours.calendar(),
            default_locale=default_locales.get(tenant, "en"),
            secrets=secrets,
        )
    if missing:
        raise MissingTokenSecret("answer-token secret not set in the environment for " + "; ".join(missing))
    return configs


@dataclass
class _PendingEntry:
    tenant: str
    customer_id: str
    entry_id: str
    entry: domain.AccountEntry
    at: datetime
    cause: Envelope | None


@dataclass
class AccountBook:
    """Collects loyalty-account entries during a batch; `flush` books them with a fixed number of queries."""

    configs: Mapping[str, TenantConfig]
    pending: list[_PendingEntry] = field(default_factory=list)

    def add(
        self,
        tenant: str,
        customer_id: str,
        facts: Sequence[AccountFact],
        cause_id: str,
        at: datetime,
        cause: Envelope | None,
    ) -> None:
        weights = self.configs[tenant].program.loyalty_account.weights
        for entry in domain.account_entries(facts, weights):
            entry_id = domain.derived_id("entry", tenant, cause_id, entry.fact, customer_id)
            self.pending.append(_PendingEntry(tenant, customer_id, entry_id, entry, at, cause))

    async def flush(self, ctx: EffectContext) -> None:
        if not self.pending:
            return
        conn = ctx.conn
        opening = {t: c.program.loyalty_account.opening_balance for t, c in self.configs.items()}
        balances = await store.lock_balances(conn, [(p.tenant, p.customer_id) for p in self.pending], opening)
        booked = await store.book_entries(
            conn, [(p.tenant, p.entry_id, p.customer_id, p.entry, p.at) for p in self.pending]
        )
        by_customer: dict[tuple[str, str], list[_PendingEntry]] = defaultdict(list)
        for p in self.pending:
            if (p.tenant, p.entry_id) in booked:
                by_customer[(p.tenant, p.customer_id)].append(p)
        updates: list[tuple[str, str, int, bool]] = []
        for (tenant, customer_id), entries in by_customer.items():
            change = domain.apply_entries(balances[(tenant, customer_id)], [e.entry for e in entries])
            updates.append((tenant, customer_id, change.balance, change.balance < 0))
            if change.became_at_risk:
                last = entries[-1]
                ctx.emit(
                    out.CustomerAtRisk(
                        customer_id=customer_id,
                        occurred_at=max(e.at for e in entries),
                        balance=change.balance,
                        last_entry_kind=last.entry.fact,
                    ),
                    cause=last.cause,
                    tenant=tenant,
                )
        await store.set_balances(conn, updates)
        self.pending.clear()


@dataclass(frozen=True)
class IncomingAnswer:
    tenant: str
    request_id: str
    score: int | None
    comment: str | None
    answered_at: datetime
    channel: str
    cause: Envelope | None = None
    survey_id: str | None = None  # as claimed by the answer; must match the request
    customer_id: str | None = None


@dataclass(frozen=True)
class AnswerResult:
    accepted: bool
    reason: str = ""  # "reused" | "unknown_request" | "invalid: ..." when not accepted
    feedback_id: str | None = None


class SurveysHandlers:
    def __init__(self, configs: Mapping[str, TenantConfig], nps_gauge: Gauge | None = None) -> None:
        self.configs = dict(configs)
        # `loyalty_surveys_nps{tenant}`: NPS of the last NPS_WINDOW, refreshed by a timer after NPS answers.
        self.nps_gauge = nps_gauge

    def config(self, tenant: str) -> TenantConfig:
        try:
            return self.configs[tenant]
        except KeyError:
            raise UnknownTenant(f"no surveys program for tenant {tenant!r}") from None

    # --- the batch handler ----------------------------------------------------------------------------

    async def on_batch(self, ctx: Any) -> None:
        by_type: dict[str, list[Envelope]] = defaultdict(list)
        for env in ctx.events:
            self.config(env.tenant)
            by_type[env.type].append(env)
        book = AccountBook(self.configs)
        await self._customer_facts(ctx, by_type)
        await self._triggers(ctx, by_type, book)
        answers = by_type.get(retail.SurveyAnswered.ce_type(), [])
        if answers:
            results = await self.apply_answers(ctx, [self._answer_from_event(e) for e in answers], book)
            for env, result in zip(answers, results, strict=True):
                if result.accepted or result.reason == "reused":
                    continue  # a second answer to one request is a duplicate, not poison
                # Bad data: fail the batch so the kit isolates this event and dead-letters it with the reason.
                if result.reason == "unknown_request":
                    request_id = _payload(env, retail.SurveyAnswered).request_id
                    raise UnknownRequest(f"SurveyAnswered {env.id}: no survey request {request_id}")
                raise domain.InvalidAnswer(f"SurveyAnswered {env.id}: {result.reason}")
        await self._resolutions(ctx, by_type.get(retail.CaseResolved.ce_type(), []), book)
        for env in by_type.get(retail.ImprovementShipped.ce_type(), []):
            await self._improvement(ctx, env, book)
        await self._delivery_reports(ctx, by_type)
        await book.flush(ctx)

    async def _customer_facts(self, ctx: Any, by_type: Mapping[str, list[Envelope]]) -> None:
        rows: list[tuple[str, str, datetime | None, str | None, str | None]] = []
        for env in by_type.get(retail.CustomerRegistered.ce_type(), []):
            registered = _payload(env, retail.CustomerRegistered)
            rows.append((env.tenant, registered.customer_id, None, None, registered.locale))
        for env in by_type.get(tiers.TierChanged.ce_type(), []):
            changed = _payload(env, tiers.TierChanged)
            rows.append((env.tenant, changed.customer_id, None, changed.to_tier, None))
        await store.upsert_customer_facts(ctx.conn, rows)
        purchases = [
            (env.tenant, _payload(env, retail.PurchaseMade)) for env in by_type.get(retail.PurchaseMade.ce_type(), [])
        ]
        orders = [
            (tenant, p.order_id, p.customer_id, p.store_id, p.sales_channel, _main_category(p))
            for tenant, p in purchases
        ]
        await store.insert_orders(ctx.conn, orders)

    async def _triggers(self, ctx: Any, by_type: Mapping[str, list[Envelope]], book: AccountBook) -> None:
        purchases = by_type.get(retail.PurchaseMade.ce_type(), [])
        deliveries = by_type.get(retail.DeliveryCompleted.ce_type(), [])
        consultations = by_type.get(retail.ConsultationCompleted.ce_type(), [])
        if not (purchases or deliveries or consultations):
            return
        conn = ctx.conn
        known_first = await store.first_purchases(conn, [(e.tenant, e.data.customer_id) for e in purchases])
        earliest_in_batch: dict[tuple[str, str], Envelope] = {}
        for env in purchases:
            key = (env.tenant, env.data.customer_id)
            if key not in earliest_in_batch or env.time < earliest_in_batch[key].time:
                earliest_in_batch[key] = env
        await store.upsert_customer_facts(
            conn, [(t, c, env.time, None, None) for (t, c), env in earliest_in_batch.items()]
        )
        segments = await store.order_segments(
            conn, [(e.tenant, _payload(e, retail.DeliveryCompleted).order_id) for e in deliveries]
        )
        customers = [(e.tenant, e.data.customer_id) for e in (*purchases, *deliveries, *consultations)]
        tiers_locales = await store.customer_tiers_and_locales(conn, customers)

        rows: list[store.RequestRow] = []
        for env in (*purchases, *deliveries, *consultations):
            data = env.data
            key = (env.tenant, data.customer_id)
            is_first = (
                env.type == retail.PurchaseMade.ce_type() and key not in known_first and earliest_in_batch[key] is env
            )
            fact = domain.TriggerFact(env.tenant, env.type.split(".")[1], env.id, data.customer_id, env.time, is_first)
            tier = tiers_locales.get(key, (None, None))[0]
            if isinstance(data, retail.PurchaseMade):
                segment = store.Segment(data.store_id, data.sales_channel, _main_category(data), tier)
            elif isinstance(data, retail.DeliveryCompleted):
                known = segments.get((env.tenant, data.order_id), store.Segment())
                segment = store.Segment(known.store_id, known.sales_channel, known.category, tier)
                book.add(env.tenant, data.customer_id, ["delivery_completed"], env.id, env.time, env)
            else:
                store_id = _payload(env, retail.ConsultationCompleted).store_id
                segment = store.Segment(store_id, "store" if store_id else None, None, tier)
            for planned in domain.plan_surveys(fact, self.config(env.tenant).program):
                rows.append(
                    store.RequestRow(
                        tenant=env.tenant,
                        request_id=planned.request_id,
                        customer_id=planned.customer_id,
                        survey_id=planned.survey_id,
                        kind=planned.kind,
                        trigger=domain.TRIGGER_NAMES[fact.event_type],
                        trigger_event_id=env.id,
                        due_at=planned.due_at,
                        status="pending",
                        parent_feedback_id=None,
                        segment=segment,
                    )
                )
        new = await store.insert_pending_requests(conn, rows)
        await ctx.schedule_many(
            [
                (SURVEY_DUE, f"{r.tenant}/{r.request_id}", r.due_at, {"request_id": r.request_id}, r.tenant)
                for r in rows
                if (r.tenant, r.request_id) in new
            ]
        )

    # --- answers (events and the HTTP endpoint share this) --------------------------------------------

    @staticmethod
    def _answer_from_event(env: Envelope) -> IncomingAnswer:
        data = _payload(env, retail.SurveyAnswered)
        return IncomingAnswer(
            tenant=env.tenant,
            request_id=data.request_id,
            score=data.score,
            comment=data.comment,
            answered_at=env.time,
            channel=data.answer_channel,
            cause=env,
            survey_id=data.survey_id,
            customer_id=data.customer_id,
        )

    async def apply_answers(
        self, ctx: EffectContext, answers: Sequence[IncomingAnswer], book: AccountBook | None = None
    ) -> list[AnswerResult]:
        """Answers → feedback, follow-up timers, cases, account entries; results in input order."""
        own_book = book is None
        book = book or AccountBook(self.configs)
        conn = ctx.conn
        keys = [(a.tenant, a.request_id) for a in answers]
        requests = await store.requests_by_id(conn, keys)
        results: list[AnswerResult | None] = [None] * len(answers)
        candidates: list[tuple[int, IncomingAnswer, store.RequestRow, domain.FeedbackOutcome]] = []
        for i, answer in enumerate(answers):
            request = requests.get((answer.tenant, answer.request_id))
            if request is None or (answer.customer_id is not None and answer.customer_id != request.customer_id):
                results[i] = AnswerResult(False, "unknown_request")
                continue
            if answer.survey_id is not None and answer.survey_id != request.survey_id:
                results[i] = AnswerResult(
                    False,
                    f"invalid: answer names survey {answer.survey_id!r}, the request was for {request.survey_id!r}",
                )
                continue
            config = self.config(answer.tenant)
            kind: SurveyKind = request.kind  # type: ignore[assignment]
            try:
                outcome = domain.evaluate_answer(
                    domain.Answer(
                        tenant=answer.tenant,
                        request_id=answer.request_id,
                        survey_id=request.survey_id,
                        kind=kind,
                        customer_id=request.customer_id,
                        score=answer.score,
                        comment=answer.comment,
                        answered_at=answer.answered_at,
                        is_follow_up=request.parent_feedback_id is not None,
                    ),
                    config.program,
                    config.calendar,
                )
            except domain.InvalidAnswer as exc:
                results[i] = AnswerResult(False, f"invalid: {exc}")
                continue
            candidates.append((i, answer, request, outcome))

        claimed = await store.claim_tokens(
            conn, [(a.tenant, a.request_id, a.answered_at, a.channel) for _, a, _, _ in candidates]
        )
        feedback_rows: list[store.FeedbackRow] = []
        case_rows: list[tuple[str, str, str, str, str, int, datetime, datetime]] = []
        accepted: list[tuple[IncomingAnswer, store.RequestRow, domain.FeedbackOutcome]] = []
        for i, answer, request, outcome in candidates:
            if (answer.tenant, answer.request_id) not in claimed:
                results[i] = AnswerResult(False, "reused")
                continue
            claimed.discard((answer.tenant, answer.request_id))  # a second copy in the same call is reused too
            results[i] = AnswerResult(True, feedback_id=outcome.feedback_id)
            accepted.append((answer, request, outcome))
            score = answer.score if answer.score is not None else 0
            feedback_rows.append(
                store.FeedbackRow(
                    tenant=answer.tenant,
                    feedback_id=outcome.feedback_id,
                    request_id=answer.request_id,
                    customer_id=request.customer_id,
                    survey_id=request.survey_id,
                    kind=request.kind,
                    score=score,
                    comment=outcome.comment,
                    themes=outcome.themes,
                    sentiment=outcome.sentiment,
                    answered_at=answer.answered_at,
                    channel=answer.channel,
                    segment=request.segment,
                )
            )
            if outcome.case is not None:
                case_rows.append(
                    (
                        answer.tenant,
                        outcome.case.case_id,
                        outcome.feedback_id,
                        request.customer_id,
                        outcome.case.queue,
                        score,
                        outcome.case.opened_at,
                        outcome.case.deadline_at,
                    )
                )
        await store.insert_feedback(conn, feedback_rows)
        opened = await store.insert_cases(conn, case_rows)

        follow_up_timers: list[tuple[str, str, datetime, dict[str, Any], str]] = []
        deadline_timers: list[tuple[str, str, datetime, dict[str, Any], str]] = []
        for answer, request, outcome in accepted:
            segment = request.segment
            ctx.emit(
                out.FeedbackReceived(
                    customer_id=request.customer_id,
                    occurred_at=answer.answered_at,
                    feedback_id=outcome.feedback_id,
                    request_id=answer.request_id,
                    survey_kind=request.kind,  # type: ignore[arg-type]
                    score=answer.score if answer.score is not None else 0,
                    comment=outcome.comment,
                    themes=list(outcome.themes),
                    store_id=segment.store_id,
                    sales_channel=segment.sales_channel,  # type: ignore[arg-type]
                    category=segment.category,
                ),
                cause=answer.cause,
                tenant=answer.tenant,
            )
            if outcome.follow_up_due_at is not None:
                follow_up_timers.append(
                    (
                        FOLLOW_UP_DUE,
                        f"{answer.tenant}/{outcome.feedback_id}",
                        outcome.follow_up_due_at,
                        {"feedback_id": outcome.feedback_id},
                        answer.tenant,
                    )
                )
            case = outcome.case
            if case is not None and (answer.tenant, case.case_id) in opened:
                ctx.emit(
                    out.DetractorCaseOpened(
                        customer_id=request.customer_id,
                        occurred_at=answer.answered_at,
                        case_id=case.case_id,
                        feedback_id=outcome.feedback_id,
                        score=answer.score if answer.score is not None else 0,
                        deadline_at=case.deadline_at,
                        queue=case.queue,
                    ),
                    cause=answer.cause,
                    tenant=answer.tenant,
                )
                deadline_timers.append(
                    (
                        CASE_DEADLINE,
                        f"{answer.tenant}/{case.case_id}",
                        case.deadline_at,
                        {"case_id": case.case_id},
                        answer.tenant,
                    )
                )
            book.add(
                answer.tenant,
                request.customer_id,
                outcome.account_facts,
                outcome.feedback_id,
                answer.answered_at,
                answer.cause,
            )
        # DO NOTHING for both: a follow-up is never moved or repeated; a case's deadline never changes.
        latest_nps: dict[str, datetime] = {}
        for answer, request, _ in accepted:
            if request.kind == "nps":
                latest_nps[answer.tenant] = max(answer.answered_at, latest_nps.get(answer.tenant, answer.answered_at))
        refresh_timers: list[tuple[str, str, datetime, dict[str, Any], str]] = [
            (NPS_REFRESH, tenant, at + NPS_REFRESH_DELAY, {}, tenant) for tenant, at in latest_nps.items()
        ]
        await ctx.schedule_many([*follow_up_timers, *deadline_timers, *refresh_timers], replace=False)
        if own_book:
            await book.flush(ctx)
        return [r if r is not None else AnswerResult(False, "unknown_request") for r in results]

    # --- cases ----------------------------------------------------------------------------------------

    async def _resolutions(self, ctx: Any, events: Sequence[Envelope], book: AccountBook) -> None:
        if not events:
            return
        resolutions = [(env, _payload(env, retail.CaseResolved)) for env in events]
        cases = await store.cases_by_id(ctx.conn, [(env.tenant, data.case_id) for env, data in resolutions])
        updates: list[tuple[str, str, datetime, str, int, int, bool]] = []
        resolved_now: dict[tuple[str, str], domain.CaseState] = {}
        for env, data in resolutions:
            key = (env.tenant, data.case_id)
            current = resolved_now.get(key, cases.get(key))
            resolution = domain.resolve_case(current, data.case_id, env.time, self.config(env.tenant).calendar)
            if resolution is None:
                log.info("case already resolved; no second loop closed", extra={"case_id": data.case_id})
                continue
            assert current is not None
            resolved_now[key] = dataclasses.replace(current, status=domain.CaseStatus.RESOLVED)
            seconds = int(resolution.time_to_resolve.total_seconds())
            updates.append(
                (
                    env.tenant,
                    data.case_id,
                    env.time,
                    data.resolved_by,
                    seconds,
                    int(resolution.business_time_to_resolve.total_seconds()),
                    resolution.within_deadline,
                )
            )
            ctx.emit(
                out.LoopClosed(
                    customer_id=current.customer_id,
                    occurred_at=env.time,
                    case_id=data.case_id,
                    reply=data.reply,
                    resolved_by=data.resolved_by,
                    seconds_to_resolve=seconds,
                ),
                cause=env,
            )
            await ctx.cancel(CASE_DEADLINE, f"{env.tenant}/{data.case_id}")
            book.add(env.tenant, current.customer_id, [resolution.account_fact], data.case_id, env.time, env)
        await store.resolve_cases(ctx.conn, updates)

    # --- you said, we did -----------------------------------------------------------------------------

    async def _improvement(self, ctx: Any, env: Envelope, book: AccountBook) -> None:
        data = _payload(env, retail.ImprovementShipped)
        config = self.config(env.tenant)
        window = config.program.you_said_we_did.window
        start, end = domain.improvement_window(env.time, window, data.since)
        candidates = await store.themed_feedback(ctx.conn, env.tenant, data.theme, start, end)
        told = await store.already_told(ctx.conn, env.tenant, data.improvement_id)
        recipients = domain.improvement_recipients(candidates, data.theme, env.time, window, told, data.since)
        recorded = await store.record_notices(
            ctx.conn, env.tenant, data.improvement_id, data.theme, recipients, env.time
        )
        locales = await store.customer_tiers_and_locales(ctx.conn, [(env.tenant, c) for c in recipients])
        for customer_id in recipients:
            if customer_id not in recorded:
                continue
            locale = locales.get((env.tenant, customer_id), (None, None))[1]
            ctx.emit(
                out.YouSaidWeDid(
                    customer_id=customer_id,
                    occurred_at=env.time,
                    improvement_id=data.improvement_id,
                    theme=data.theme,
                    message=domain.message_for_locale(data.messages, locale, config.default_locale),
                ),
                cause=env,
            )
            book.add(env.tenant, customer_id, ["improvement_shipped"], data.improvement_id, env.time, env)

    # --- the notifier's delivery reports (contact budget, consent, no contact) -------------------------

    async def _delivery_reports(self, ctx: Any, by_type: Mapping[str, list[Envelope]]) -> None:
        """A survey the notifier suppressed (contact budget, consent, cap) or could not deliver is recorded
        as such, so it never counts as unanswered."""
        rows: list[tuple[str, str, str, str]] = []
        for ce_type, status in (
            ("loyalty.NotificationSuppressed.v1", "suppressed"),
            (notifier_events.NotificationFailed.ce_type(), "undelivered"),
        ):
            for env in by_type.get(ce_type, []):
                data = env.data
                if not isinstance(data, notifier_events.NotificationFailed | notifier_events.NotificationSuppressed):
                    raise TypeError(f"{env.type} {env.id}: not a delivery report ({type(data).__name__})")
                if data.source_event_type in REQUEST_EVENT_TYPES:
                    rows.append((env.tenant, data.source_event_id, status, str(data.reason)))
        changed = await store.mark_not_delivered(ctx.conn, rows)
        if changed:
            log.info("survey requests recorded as not delivered", extra={"count": len(changed)})

    # --- timers ---------------------------------------------------------------------------------------

    async def on_survey_due(self, ctx: Any, timers: list[Timer]) -> None:
        conn = ctx.conn
        keys = [(t.tenant, t.payload["request_id"]) for t in timers]
        requests = await store.requests_by_id(conn, keys)
        pending = [r for r in requests.values() if r.status == "pending"]
        if not pending:
            return
        last = await store.last_requested(conn, [(r.tenant, r.customer_id) for r in pending])
        locales = await store.customer_tiers_and_locales(conn, [(r.tenant, r.customer_id) for r in pending])
        sent_rows: list[tuple[str, str, datetime, datetime, str]] = []
        skipped_keys: list[tuple[str, str]] = []
        cancelled_keys: list[tuple[str, str]] = []
        by_tenant: dict[str, list[store.RequestRow]] = defaultdict(list)
        for r in pending:
            by_tenant[r.tenant].append(r)
        for tenant, rows in by_tenant.items():
            config = self.config(tenant)
            planned = {
                r.request_id: domain.PlannedSurvey(
                    request_id=r.request_id,
                    survey_id=r.survey_id,
                    kind=r.kind,  # type: ignore[arg-type]  # stored from a SurveyKind
                    customer_id=r.customer_id,
                    due_at=r.due_at,
                    trigger_event_type=r.trigger,  # the contract's trigger name (delivery, purchase, ...)
                    trigger_event_id=r.trigger_event_id,
                )
                for r in rows
                if config.program.survey(r.survey_id) is not None
            }
            # The retailer removed the survey from its program since it was planned: it is not sent.
            cancelled_keys.extend((tenant, r.request_id) for r in rows if r.request_id not in planned)
            history = {c: at for (t, c), at in last.items() if t == tenant}
            send, skipped = domain.decide_sends(list(planned.values()), history, config.program.recontact_period)
            skipped_keys.extend((tenant, p.request_id) for p in skipped)
            for p in send:
                survey = config.program.survey(p.survey_id)
                locale = locales.get((tenant, p.customer_id), (None, None))[1]
                expires_at = p.due_at + config.program.answer_token.ttl
                token = domain.issue_token(
                    domain.TokenClaims(tenant, p.request_id, p.customer_id, p.survey_id, p.kind, expires_at),
                    config.signing_secret,
                )
                question = None
                if survey is not None and p.kind == "question":
                    question = domain.message_for_locale(survey.question, locale, config.default_locale)[:500]
                env = ctx.emit(
                    out.SurveyRequested(
                        customer_id=p.customer_id,
                        occurred_at=p.due_at,
                        request_id=p.request_id,
                        survey_id=p.survey_id,
                        kind=p.kind,
                        answer_token=token,
                        answer_url=config.program.answer_token.answer_url.replace("{token}", token),
                        expires_at=expires_at,
                        trigger=p.trigger_event_type,  # type: ignore[arg-type]
                        question=question,
                    ),
                    tenant=tenant,
                )
                sent_rows.append((tenant, p.request_id, p.due_at, expires_at, env.id))
        await store.mark_requested(conn, sent_rows)
        await store.set_request_status(conn, skipped_keys, "skipped_recontact")
        await store.set_request_status(conn, cancelled_keys, "cancelled")

    async def on_follow_up_due(self, ctx: Any, timers: list[Timer]) -> None:
        conn = ctx.conn
        keys = [(t.tenant, t.payload["feedback_id"]) for t in timers]
        feedback = await store.feedback_by_id(conn, keys)
        claims = [
            (t, f, domain.follow_up_request_id(t, f), timer.due_at)
            for timer in timers
            for t, f in [(timer.tenant, timer.payload["feedback_id"])]
            if (t, f) in feedback
        ]
        claimed = await store.claim_follow_ups(conn, claims)
        rows: list[store.RequestRow] = []
        sent: list[tuple[str, str, datetime, datetime, str]] = []
        for tenant, feedback_id, request_id, due_at in claims:
            if (tenant, feedback_id) not in claimed:
                continue  # a follow-up for this answer exists already: never twice
            claimed.discard((tenant, feedback_id))
            fb = feedback[(tenant, feedback_id)]
            config = self.config(tenant)
            kind: SurveyKind = fb["kind"]
            rows.append(
                store.RequestRow(
                    tenant=tenant,
                    request_id=request_id,
                    customer_id=fb["customer_id"],
                    survey_id=fb["survey_id"],
                    kind=kind,
                    trigger="follow_up",
                    trigger_event_id=feedback_id,
                    due_at=due_at,
                    status="pending",
                    parent_feedback_id=feedback_id,
                    segment=store.Segment(fb["store_id"], fb["sales_channel"], fb["category"], fb["tier"]),
                )
            )
            expires_at = due_at + config.program.answer_token.ttl
            token = domain.issue_token(
                domain.TokenClaims(tenant, request_id, fb["customer_id"], fb["survey_id"], kind, expires_at),
                config.signing_secret,
            )
            env = ctx.emit(
                out.FollowUpRequested(
                    customer_id=fb["customer_id"],
                    occurred_at=due_at,
                    feedback_id=feedback_id,
                    request_id=request_id,
                    question_key=domain.follow_up_question_key(kind),
                    answer_token=token,
                    answer_url=config.program.answer_token.answer_url.replace("{token}", token),
                    expires_at=expires_at,
                ),
                tenant=tenant,
            )
            sent.append((tenant, request_id, due_at, expires_at, env.id))
        await store.insert_pending_requests(conn, rows)
        await store.mark_requested(conn, sent)

    async def on_nps_refresh(self, ctx: Any, timers: list[Timer]) -> None:
        """Set the NPS gauge of each tenant from the answers of the last 30 days (read only)."""
        await _refresh_nps(self, ctx, timers)

    async def on_case_deadline(self, ctx: Any, timers: list[Timer]) -> None:
        conn = ctx.conn
        cases = await store.cases_by_id(conn, [(t.tenant, t.payload["case_id"]) for t in timers])
        book = AccountBook(self.configs)
        breached: list[tuple[str, str]] = []
        for timer in timers:
            key = (timer.tenant, timer.payload["case_id"])
            case = cases.get(key)
            if case is None or key in breached:
                continue
            now = max(await ctx.now_for(timer.tenant), timer.due_at)  # the timer fired: its due time has come
            if not domain.deadline_breached(case, now):
                continue
            breached.append(key)
            ctx.emit(
                out.CaseDeadlineBreached(
                    customer_id=case.customer_id,
                    occurred_at=case.deadline_at,
                    case_id=case.case_id,
                    deadline_at=case.deadline_at,
                    queue=case.queue,
                ),
                tenant=timer.tenant,
            )
            book.add(timer.tenant, case.customer_id, ["deadline_breached"], case.case_id, case.deadline_at, None)
        await store.mark_breached(conn, breached)
        await book.flush(ctx)


async def _refresh_nps(handlers: SurveysHandlers, ctx: Any, timers: list[Timer]) -> None:
    if handlers.nps_gauge is None:
        return
    for timer in timers:
        counts = await store.nps_counts(ctx.conn, timer.tenant, timer.due_at - NPS_WINDOW, timer.due_at)
        value = domain.NpsSummary(sum(counts), *counts).nps
        if value is not None:
            handlers.nps_gauge.labels(timer.tenant).set(value)


def _main_category(purchase: retail.PurchaseMade) -> str | None:
    """The category the customer spent most on (delivery fees and gift cards say nothing about taste)."""
    spend: dict[str, int] = defaultdict(int)
    for line in purchase.lines:
        if line.category not in NON_PRODUCT_CATEGORIES:
            spend[line.category] += line.quantity * line.unit_price.amount_minor
    if not spend:
        return None
    return max(sorted(spend), key=lambda c: spend[c])

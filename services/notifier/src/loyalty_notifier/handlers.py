"""Batch and timer handlers: decode → domain → persist → emit, inside the kit's transaction.

Nothing is sent here. A handler only *plans* deliveries (rows in `deliveries`, unique per source event,
recipient and channel) in the same transaction that records the inbox ids; the sender loop sends them
after that transaction committed. One query per table per batch.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loyalty_contracts.catalogue import event_types_consumed_by
from loyalty_contracts.envelope import Envelope
from loyalty_contracts.events.notifier import NotificationSuppressed
from loyalty_kit.effects import EffectContext
from loyalty_kit.timers import Timer

from loyalty_notifier import store
from loyalty_notifier.config import TenantNotifier, journey_context
from loyalty_notifier.domain import (
    NOTIFIER_NAMESPACE,
    Category,
    Channel,
    CustomerProfile,
    JourneyState,
    PlannedDelivery,
    RoutePolicy,
    StepSpec,
    StepTimer,
    Suppressed,
    SuppressionReason,
    apply_consent_change,
    apply_registration,
    journey_message_id,
    journey_on_consent,
    journey_on_event,
    notification_id,
    plan_message,
    step_decision,
)
from loyalty_notifier.store import CustomerKey, CustomerRow, JourneyKey, NewDelivery, SuppressionRow
from loyalty_notifier.templates import customer_context

JOURNEY_TIMER = "journey-step"
DELIVERIES_CHANNEL = "loyalty_notifier_deliveries"
# Suppressions worth an event (a message the customer would otherwise have received). Journey bookkeeping
# (path changed, step already decided) is recorded in the table only.
REPORTED_REASONS = frozenset(
    {
        SuppressionReason.UNKNOWN_CUSTOMER,
        SuppressionReason.NO_CONSENT,
        SuppressionReason.NO_REACHABLE_CHANNEL,
        SuppressionReason.CONTACT_BUDGET,
        SuppressionReason.FREQUENCY_CAP,
    }
)
CONTACT_CHANNELS = {"email": Channel.EMAIL, "phone": Channel.SMS, "telegram_chat_id": Channel.TELEGRAM}


@dataclass
class _Plan:
    """What one batch decided; persisted at the end with one statement per table."""

    deliveries: list[NewDelivery] = field(default_factory=list)
    suppressions: list[tuple[SuppressionRow, datetime]] = field(default_factory=list)
    timers: list[tuple[str, StepTimer]] = field(default_factory=list)
    journeys: dict[JourneyKey, JourneyState] = field(default_factory=dict)
    customers: dict[CustomerKey, CustomerRow] = field(default_factory=dict)
    steps: list[tuple[str, str, str, str, datetime, str]] = field(default_factory=list)


def _ce_name(env: Envelope) -> str:
    return type(env.data).event_type


class Notifier:
    """The service's handlers over the tenants' compiled configuration."""

    def __init__(self, tenants: dict[str, TenantNotifier]) -> None:
        self.tenants = tenants

    # ----------------------------------------------------------------------------------------- planning

    def _plan_customer_message(
        self,
        plan: _Plan,
        tenant: TenantNotifier,
        row: CustomerRow | None,
        route: RoutePolicy,
        *,
        customer_id: str,
        source_event_id: str,
        source_event_type: str,
        occurred_at: datetime,
        event: dict[str, Any] | None,
        event_type: str | None,
        journey: dict[str, Any] | None,
        journey_step: str | None,
        traceparent: str | None,
    ) -> PlannedDelivery | Suppressed:
        decision = plan_message(
            route,
            row.profile if row else None,
            occurred_at=occurred_at,
            configured_channels=tenant.configured_channels,
            quiet=tenant.quiet,
            supported_locales=tenant.locales,
            default_locale=tenant.default_locale,
            default_timezone=tenant.timezone,
        )
        if isinstance(decision, Suppressed):
            plan.suppressions.append(
                (
                    SuppressionRow(
                        tenant.tenant,
                        customer_id,
                        source_event_id,
                        source_event_type,
                        route.template,
                        route.category,
                        None,
                        decision.reason.value,
                        decision.detail,
                    ),
                    occurred_at,
                )
            )
            return decision
        assert row is not None
        customer = customer_context(
            customer_id=customer_id,
            name=row.profile.name,
            locale=decision.locale,
            tier=row.tier,
            last_purchase=row.last_purchase,
        )
        rendered = tenant.render(
            route.template,
            decision.locale,
            event_type=event_type,
            event=event,
            customer=customer,
            category=route.category,
            journey=journey,
        )
        content: dict[str, Any] = {
            **rendered.to_json(),
            "unsubscribe_url": tenant.unsubscribe_url(customer_id, route.category),
        }
        plan.deliveries.append(
            NewDelivery(
                tenant=tenant.tenant,
                customer_id=customer_id,
                notification_id=notification_id(tenant.tenant, source_event_id, decision.channel, decision.recipient),
                source_event_id=source_event_id,
                source_event_type=source_event_type,
                channel=decision.channel,
                recipient=decision.recipient,
                endpoint_id=None,
                category=route.category,
                template=route.template,
                locale=decision.locale,
                time_zone=row.profile.timezone or tenant.timezone,
                content=content,
                fallbacks=decision.fallbacks,
                journey_step=journey_step,
                due_at=decision.due_at,
                source_time=occurred_at,
                traceparent=traceparent,
            )
        )
        return decision

    def _plan_webhooks(self, plan: _Plan, tenant: TenantNotifier, env: Envelope, name: str) -> None:
        for endpoint in tenant.program.webhooks:
            if name not in endpoint.event_types:
                continue
            body = json.dumps(
                {"type": env.type, "timestamp": env.time.isoformat(), "data": env.data.model_dump(mode="json")},
                separators=(",", ":"),
            )
            webhook_id = "msg_" + uuid.uuid5(NOTIFIER_NAMESPACE, f"{env.tenant}/{env.id}/{endpoint.id}").hex
            plan.deliveries.append(
                NewDelivery(
                    tenant=tenant.tenant,
                    customer_id=env.data.customer_id,
                    notification_id=notification_id(tenant.tenant, env.id, Channel.WEBHOOK, endpoint.id),
                    source_event_id=env.id,
                    source_event_type=env.type,
                    channel=Channel.WEBHOOK,
                    recipient=endpoint.id,
                    endpoint_id=endpoint.id,
                    category=Category.TRANSACTIONAL,
                    template=f"webhook_{name}"[:200],
                    locale=tenant.default_locale,
                    time_zone=tenant.timezone,
                    content={"body": body, "webhook_id": webhook_id},
                    fallbacks=(),
                    journey_step=None,
                    due_at=env.time,
                    source_time=env.time,
                    traceparent=env.traceparent,
                )
            )

    # ----------------------------------------------------------------------------------------- batch

    async def handle_batch(self, ctx: Any) -> None:
        """The one batch handler for every consumed event type (BatchContext from the kit)."""
        events = sorted((e for e in ctx.events if e.tenant in self.tenants), key=lambda e: e.time)
        if not events:
            return
        keys = {(e.tenant, e.data.customer_id) for e in events}
        customers = await store.load_customers(ctx.conn, keys)
        has_journeys = any(self.tenants[t].journeys for t, _ in keys)
        journeys = await store.load_journeys(ctx.conn, keys) if has_journeys else {}
        plan = _Plan()
        for env in events:
            self._apply(plan, env, customers, journeys)
        await self._persist(ctx, plan)

    def _apply(
        self,
        plan: _Plan,
        env: Envelope,
        customers: dict[CustomerKey, CustomerRow],
        journeys: dict[JourneyKey, JourneyState],
    ) -> None:
        tenant = self.tenants[env.tenant]
        name = _ce_name(env)
        data: Any = env.data
        key = (env.tenant, data.customer_id)
        row = customers.get(key)
        if name == "CustomerRegistered":
            profile = apply_registration(
                row.profile if row else None,
                customer_id=data.customer_id,
                name=data.name,
                locale=data.locale,
                timezone=data.time_zone,
                contacts={ch: getattr(data.contacts, f) for f, ch in CONTACT_CHANNELS.items()},
                consents={Category(c): getattr(data.consents, c.value) for c in Category},
                at=data.occurred_at,
            )
            row = CustomerRow(profile, row.tier if row else None, row.last_purchase if row else None)
        elif name == "ConsentChanged":
            profile = apply_consent_change(
                row.profile if row else None,
                customer_id=data.customer_id,
                category=Category(data.category),
                channel=Channel(data.channel) if data.channel else None,
                granted=data.granted,
                at=data.occurred_at,
            )
            row = CustomerRow(profile, row.tier if row else None, row.last_purchase if row else None)
            for spec in tenant.journeys.values():
                jkey = (env.tenant, data.customer_id, spec.name)
                if jkey in journeys:
                    updated = journey_on_consent(spec, journeys[jkey], profile, data.occurred_at)
                    if updated != journeys[jkey]:
                        journeys[jkey] = plan.journeys[jkey] = updated
        elif name == "PurchaseMade":
            # A purchase before the registration arrived: keep the context, the profile comes later.
            base = row or CustomerRow(CustomerProfile(customer_id=data.customer_id))
            row = CustomerRow(
                base.profile,
                base.tier,
                {
                    "order_id": data.order_id,
                    "skus": [line.sku for line in data.lines if line.category not in ("delivery_fee", "gift_card")],
                    "categories": sorted({line.category for line in data.lines}),
                },
            )
        elif name == "TierChanged" and row is not None:
            row = CustomerRow(row.profile, data.to_tier, row.last_purchase)
        if row is not None and row is not customers.get(key):
            customers[key] = plan.customers[key] = row

        categories = [line.category for line in data.lines] if name == "PurchaseMade" else []
        for spec in tenant.journeys.values():
            jkey = (env.tenant, data.customer_id, spec.name)
            state, timers = journey_on_event(
                spec,
                journeys.get(jkey),
                customer_id=data.customer_id,
                event_name=name,
                product_categories=categories,
                at=data.occurred_at,
            )
            if state is not None and state != journeys.get(jkey):
                journeys[jkey] = plan.journeys[jkey] = state
            plan.timers.extend((env.tenant, t) for t in timers)

        route = tenant.routes.get(name)
        if route is not None:
            self._plan_customer_message(
                plan,
                tenant,
                customers.get(key),
                route,
                customer_id=data.customer_id,
                source_event_id=env.id,
                source_event_type=env.type,
                occurred_at=env.time,
                event=data.model_dump(mode="json"),
                event_type=name,
                journey=None,
                journey_step=None,
                traceparent=env.traceparent,
            )
        self._plan_webhooks(plan, tenant, env, name)

    async def _persist(self, ctx: EffectContext, plan: _Plan) -> None:
        conn = ctx.conn
        await store.save_customers(conn, plan.customers)
        await store.save_journeys(conn, plan.journeys)
        for tenant, timer in plan.timers:
            await ctx.schedule(
                JOURNEY_TIMER,
                f"{tenant}/{timer.key}",
                timer.due_at,
                {
                    "journey": timer.journey,
                    "customer_id": timer.customer_id,
                    "path": timer.path,
                    "step": timer.step,
                    "template": timer.template,
                },
                tenant,
                replace=False,  # a redelivered purchase must not push a step later
            )
        if await store.insert_deliveries(conn, plan.deliveries):
            await conn.execute("SELECT pg_notify($1, '')", DELIVERIES_CHANNEL)  # wakes the sender at commit
        await store.mark_steps(conn, plan.steps)
        rows = [s for s, _ in plan.suppressions]
        for index in await store.insert_suppressions(conn, rows):
            row, at = plan.suppressions[index]
            if SuppressionReason(row.reason) in REPORTED_REASONS:
                ctx.emit(suppressed_event(row, at), tenant=row.tenant)

    # ----------------------------------------------------------------------------------------- journeys

    async def handle_journey_timers(self, ctx: Any, timers: list[Timer]) -> None:
        """A journey step is due: send it unless the journey moved on, ended or the step was decided."""
        steps = [
            (
                t.tenant,
                StepTimer(
                    t.payload["journey"],
                    t.payload["customer_id"],
                    t.payload["path"],
                    t.payload["step"],
                    t.payload["template"],
                    t.due_at,
                ),
            )
            for t in timers
            if t.tenant in self.tenants
        ]
        keys = {(tenant, s.customer_id) for tenant, s in steps}
        customers = await store.load_customers(ctx.conn, keys)
        journeys = await store.load_journeys(ctx.conn, keys)
        decided = await store.decided_steps(ctx.conn, ((t, s.customer_id, s.journey) for t, s in steps))
        plan = _Plan()
        for tenant_name, timer in steps:
            tenant = self.tenants[tenant_name]
            spec = tenant.journeys.get(timer.journey)
            jkey = (tenant_name, timer.customer_id, timer.journey)
            if spec is None:
                continue  # the journey was removed from the program: nothing to send
            source_id = journey_message_id(tenant_name, timer.customer_id, timer.journey, timer.step)
            source_type = f"journey:{timer.journey}:{timer.step}"
            decision = step_decision(spec, journeys.get(jkey), timer, decided[jkey])
            if isinstance(decision, Suppressed):
                plan.suppressions.append(
                    (
                        SuppressionRow(
                            tenant_name,
                            timer.customer_id,
                            source_id,
                            source_type,
                            timer.template,
                            spec.category,
                            None,
                            decision.reason.value,
                            decision.detail,
                        ),
                        timer.due_at,
                    )
                )
                continue
            step: StepSpec = decision
            route = RoutePolicy(step.template, spec.category, step.channels or spec.channels)
            state = journeys[jkey]
            day = (timer.due_at - state.started_at).days
            outcome = self._plan_customer_message(
                plan,
                tenant,
                customers.get((tenant_name, timer.customer_id)),
                route,
                customer_id=timer.customer_id,
                source_event_id=source_id,
                source_event_type=source_type,
                occurred_at=timer.due_at,
                event=None,
                event_type=None,
                journey=journey_context(timer.journey, step.step, state.path, day),
                journey_step=step.step,
                traceparent=None,
            )
            decided[jkey].add(step.step)
            result = "planned" if isinstance(outcome, PlannedDelivery) else f"suppressed:{outcome.reason.value}"
            plan.steps.append((tenant_name, timer.customer_id, timer.journey, step.step, timer.due_at, result))
        await self._persist(ctx, plan)


def suppressed_event(row: SuppressionRow, at: datetime) -> NotificationSuppressed:
    return NotificationSuppressed(
        customer_id=row.customer_id,
        occurred_at=at,
        source_event_id=row.source_event_id,
        source_event_type=row.source_event_type,
        template=row.template,
        category=(row.category or Category.TRANSACTIONAL).value,
        channel=row.channel.value if row.channel else None,
        reason=row.reason,  # type: ignore[arg-type]  # REPORTED_REASONS are the event's reason codes
        detail=row.detail[:500] or None,
    )


def consumed_event_types() -> list[str]:
    """Every ce_type the notifier subscribes to, from the catalogue: CustomerRegistered, ConsentChanged,
    PurchaseMade (journeys) and every result event of tiers, referrals and surveys."""
    return sorted(event_types_consumed_by("notifier"))

"""A tiny service for the kit's tests: counts purchases per customer, emits one milestone per purchase.

An order id starting with "POISON" makes the handler fail deterministically, unless ``healed`` is set;
``connection_drops`` makes the next N handler calls fail like a lost database connection (transient).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import asyncpg
from loyalty_contracts.events.retail import PurchaseMade
from loyalty_contracts.events.tiers import TierProgressMilestone
from loyalty_kit import BatchContext, ServiceApp, ServiceSettings, Timer, TimerContext

PURCHASE = "loyalty.PurchaseMade.v1"
MILESTONE = "loyalty.TierProgressMilestone.v1"
MIGRATIONS = Path(__file__).parent / "kit_counter_migrations"


class Poisoned(Exception):
    pass


def build(settings: ServiceSettings, **kwargs: object) -> ServiceApp:
    app = ServiceApp(settings.service, settings, MIGRATIONS, **kwargs)  # type: ignore[arg-type]
    app.state = {  # type: ignore[attr-defined]
        "healed": False, "fired": [], "connection_drops": 0, "committed_events": 0, "applied_when_fired": [],
    }

    @app.batch_handler(PURCHASE)
    async def on_purchases(ctx: BatchContext) -> None:
        state = app.state  # type: ignore[attr-defined]
        applied = len(ctx.events)

        def count_committed() -> None:
            state["committed_events"] += applied

        # Registered before anything can fail below: an attempt that rolls back must not count.
        ctx.after_commit(count_committed)
        if state["connection_drops"] > 0:
            state["connection_drops"] -= 1
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        per_customer: Counter[tuple[str, str]] = Counter()
        for env in ctx.events:
            data = env.data
            assert isinstance(data, PurchaseMade)
            if data.order_id.startswith("POISON") and not app.state["healed"]:  # type: ignore[attr-defined]
                raise Poisoned(f"cannot handle order {data.order_id}")
            per_customer[(env.tenant, data.customer_id)] += 1
        rows = await ctx.conn.fetch(
            "INSERT INTO purchase_counts (tenant, customer_id, purchases) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::int[]) "
            "ON CONFLICT (tenant, customer_id) "
            "DO UPDATE SET purchases = purchase_counts.purchases + EXCLUDED.purchases "
            "RETURNING tenant, customer_id, purchases",
            [t for t, _ in per_customer], [c for _, c in per_customer], list(per_customer.values()),
        )
        totals = {(r["tenant"], r["customer_id"]): r["purchases"] for r in rows}
        # Running count per customer in batch order: the emitted points grow by one per purchase.
        running = {k: totals[k] - n for k, n in per_customer.items()}
        for env in ctx.events:
            key = (env.tenant, env.data.customer_id)
            running[key] += 1
            ctx.emit(
                TierProgressMilestone(
                    customer_id=env.data.customer_id, occurred_at=env.time, tier="base", next_tier="silver",
                    fraction=0.5, points=running[key], points_needed=1,
                ),
                cause=env,
            )

    @app.timer_handler("nudge")
    async def on_nudge(ctx: TimerContext, timers: list[Timer]) -> None:
        for timer in timers:
            app.state["fired"].append(timer.key)  # type: ignore[attr-defined]
            # How many of the timer's customer's purchases were applied when it fired (event-time clock tests).
            applied = await ctx.conn.fetchval(
                "SELECT coalesce(sum(purchases), 0) FROM purchase_counts WHERE tenant = $1 AND customer_id = $2",
                timer.tenant, timer.payload["customer_id"],
            )
            app.state["applied_when_fired"].append((timer.key, applied))  # type: ignore[attr-defined]
            ctx.emit(
                TierProgressMilestone(
                    customer_id=timer.payload["customer_id"], occurred_at=timer.due_at, tier="base",
                    next_tier="silver", fraction=0.9, points=9, points_needed=1,
                ),
                tenant=timer.tenant,
            )

    return app

"""Read API: a customer's status (tier, perks, progress, next actions, expiring points, scheduled downgrade),
tier history, explainable ledger, and a tenant's tier distribution. Authenticated per tenant by the kit.

The status is evaluated live from the stored facts at the tenant's current clock (wall or event-time
watermark), with the same pure domain the consumer uses, so what the API shows is exactly what the rules say.
"""

# No "from __future__ import annotations": FastAPI must see the closure-local auth dependency at definition.
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from loyalty_kit.auth import Caller, TenantAuth
from loyalty_kit.effects import ClockMode, clock_now
from pydantic import BaseModel, Field

from loyalty_tiers import domain, store
from loyalty_tiers.handlers import TenantRules
from loyalty_tiers.program import TiersProgram

CustomerId = Annotated[str, Path(min_length=1, max_length=200, description="Customer id (the event subject).")]
Tenant = Annotated[str, Path(min_length=1, max_length=63, description="Tenant id; must match the API key's tenant.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Most rows to return.")]

_LABELS: dict[str, dict[str, str]] = {
    "review_with_photo": {"en": "Write a detailed review with a photo (at least {length} characters)",
                          "ru": "Напишите подробный отзыв с фото (от {length} символов)"},
    "review": {"en": "Write a detailed review (at least {length} characters)",
               "ru": "Напишите подробный отзыв (от {length} символов)"},
    "referral": {"en": "Invite a friend who makes a purchase", "ru": "Пригласите друга, который совершит покупку"},
    "survey": {"en": "Answer a short survey", "ru": "Ответьте на короткий опрос"},
    "community": {"en": "Community: {kind}", "ru": "Сообщество: {kind}"},
    "spend": {"en": "Shop for {amount} {currency}", "ru": "Совершите покупки на {amount} {currency}"},
}


class PerkOut(BaseModel):
    id: str
    kind: str
    name: str
    description: str


class TierOut(BaseModel):
    id: str
    name: str
    threshold: int
    perks: list[PerkOut]


class ActionOut(BaseModel):
    code: str = Field(description="review_with_photo, review, referral, survey, community:<kind> or spend")
    label: str
    points: int = Field(description="Status points one such action earns")
    times_needed: int = Field(description="How many of them close the gap on their own")
    spend_minor: int | None = Field(default=None, description="For 'spend': amount in minor units")


class ExpiringOut(BaseModel):
    expires_at: datetime
    points: int


class DowngradeOut(BaseModel):
    to_tier: str
    effective_at: datetime
    notice_at: datetime
    points_needed: int = Field(description="Points that would keep the current tier")


class StatusOut(BaseModel):
    tenant: str
    customer_id: str
    as_of: datetime
    program_version: int
    tier: TierOut
    tier_since: datetime | None
    points: int = Field(description="Status points in the qualification window")
    next_tier: TierOut | None
    points_needed: int
    progress: float = Field(description="0..1 of the way from this tier's threshold to the next one")
    actions: list[ActionOut]
    expiring_soon: list[ExpiringOut]
    scheduled_downgrade: DowngradeOut | None


class HistoryOut(BaseModel):
    from_tier: str
    to_tier: str
    direction: str
    reason: str
    effective_at: datetime
    points: int
    program_version: int
    recorded_at: datetime


class EntryOut(BaseModel):
    entry_id: str = Field(description="Id of the source event")
    revision: int
    activity: str
    points: int
    counts_from: datetime
    expires_at: datetime
    rule: str = Field(description="The rule and numbers behind the points")
    ref: str
    recorded_at: datetime


class LedgerOut(BaseModel):
    program_version: int
    entries: list[EntryOut]


class DistributionOut(BaseModel):
    tenant: str
    program_version: int
    customers: int
    tiers: dict[str, int]


def _text(localized: Mapping[str, str], locale: str, fallback: str) -> str:
    return localized.get(locale) or localized.get(fallback) or next(iter(localized.values()))


def _tier(program: TiersProgram, index: int, locale: str, fallback: str) -> TierOut:
    spec = program.ladder[index]
    return TierOut(
        id=spec.id, name=_text(spec.name, locale, fallback), threshold=spec.threshold,
        perks=[PerkOut(id=p.id, kind=p.kind, name=_text(p.name, locale, fallback),
                       description=_text(p.description, locale, fallback)) for p in spec.perks],
    )


def _label(action: domain.Action, rules: TenantRules, locale: str) -> str:
    code, _, kind = action.code.partition(":")
    templates = _LABELS[code]
    template = templates.get(locale) or templates["en"]
    scale = domain.currency_scale(rules.currency)
    amount = Decimal(action.spend_minor or 0) / scale
    return template.format(length=rules.program.earning.review.min_text_length, kind=kind,
                           amount=f"{amount:.{len(str(scale)) - 1}f}", currency=rules.currency)


def build_router(
    pool: Callable[[], asyncpg.Pool | None],
    rules: Mapping[str, TenantRules],
    auth: TenantAuth,
    *,
    clock: ClockMode = "wall",
) -> APIRouter:
    router = APIRouter(prefix="/tiers/v1/tenants/{tenant}", tags=["tiers"])
    Authenticated = Annotated[Caller, Depends(auth)]

    def rules_of(caller: Caller) -> TenantRules:
        found = rules.get(caller.tenant)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"tenant {caller.tenant!r} has no tiers program")
        return found

    def db() -> asyncpg.Pool:
        current = pool()
        if current is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="service is starting")
        return current

    @router.get("/customers/{customer_id}/status", response_model=StatusOut, summary="A customer's status")
    async def customer_status(
        customer_id: CustomerId,
        tenant: Tenant, caller: Authenticated,
        locale: Annotated[str | None, Query(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$",
                                            description="Language of names and labels; default: tenant's")] = None,
    ) -> StatusOut:
        tenant_rules = rules_of(caller)
        program = tenant_rules.program
        lang = locale or tenant_rules.default_locale
        async with db().acquire() as conn:
            row = await store.load_customer(conn, caller.tenant, customer_id)
            if row is None:
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND,
                    detail=f"no status events for customer {customer_id!r} in tenant {caller.tenant!r}",
                )
            facts = (await store.load_facts(conn, caller.tenant, [customer_id])).get(customer_id, [])
            now = await clock_now(conn, caller.tenant, clock)
        as_of = max(row.as_of, now)
        run = domain.recalculate if row.program_version != program.version else domain.process
        outcome = run(program, customer_id, facts, row.snapshot(), as_of, tenant_rules.zone)
        state = outcome.state
        progress = domain.progress(program, state)
        pending = state.pending
        return StatusOut(
            tenant=caller.tenant, customer_id=customer_id, as_of=as_of, program_version=program.version,
            tier=_tier(program, state.tier, lang, tenant_rules.default_locale), tier_since=state.since,
            points=state.points,
            next_tier=(_tier(program, progress.next_tier, lang, tenant_rules.default_locale)
                       if progress.next_tier is not None else None),
            points_needed=progress.points_needed, progress=float(progress.fraction),
            actions=[
                ActionOut(code=a.code, label=_label(a, tenant_rules, lang), points=a.points,
                          times_needed=a.times_needed, spend_minor=a.spend_minor)
                for a in domain.next_actions(program, state, tenant_rules.currency)
            ],
            expiring_soon=[ExpiringOut(expires_at=e.expires_at, points=e.points)
                           for e in domain.expiring_soon(outcome.entries, as_of, program.expiring_soon_days)],
            scheduled_downgrade=(
                DowngradeOut(to_tier=program.ladder[pending.to_tier].id, effective_at=pending.effective_at,
                             notice_at=pending.notice_at,
                             points_needed=max(0, program.ladder[state.tier].threshold - state.points))
                if pending is not None else None
            ),
        )

    @router.get("/customers/{customer_id}/history", response_model=list[HistoryOut],
                summary="A customer's tier changes with reasons, newest first")
    async def customer_history(
        customer_id: CustomerId, tenant: Tenant, caller: Authenticated, limit: Limit = 100
    ) -> list[HistoryOut]:
        rules_of(caller)
        async with db().acquire() as conn:
            rows = await store.history(conn, caller.tenant, customer_id, limit)
        return [HistoryOut(**dict(r)) for r in rows]

    @router.get("/customers/{customer_id}/ledger", response_model=LedgerOut,
                summary="The entries behind a customer's points and the rule behind each")
    async def customer_ledger(
        customer_id: CustomerId, tenant: Tenant, caller: Authenticated, limit: Limit = 200
    ) -> LedgerOut:
        version = rules_of(caller).program.version
        async with db().acquire() as conn:
            rows = await store.customer_ledger(conn, caller.tenant, customer_id, version, limit)
        return LedgerOut(program_version=version, entries=[
            EntryOut(entry_id=e.entry_id, revision=rev, activity=e.activity, points=e.points,
                     counts_from=e.counts_from, expires_at=e.expires_at, rule=e.rule, ref=e.ref, recorded_at=at)
            for rev, e, at in rows
        ])

    @router.get("/distribution", response_model=DistributionOut, summary="How many customers hold each tier")
    async def tier_distribution(tenant: Tenant, caller: Authenticated) -> DistributionOut:
        program = rules_of(caller).program
        async with db().acquire() as conn:
            counts = await store.distribution(conn, caller.tenant)
        tiers = {t.id: counts.get(t.id, 0) for t in program.ladder}
        for tier_id, n in counts.items():  # tiers of an older version not yet recalculated
            tiers.setdefault(tier_id, n)
        return DistributionOut(tenant=caller.tenant, program_version=program.version,
                               customers=sum(counts.values()), tiers=tiers)

    return router

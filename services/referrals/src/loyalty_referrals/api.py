"""Read API (plus the staff review decision), authenticated per tenant with the kit's tenant auth.

Every route names its tenant in the path; a key of another tenant gets 403, a missing or unknown key 401.
Bad parameters get 400/422 with the reason in `detail`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query, status
from loyalty_contracts.events.referrals import ReferralCodeIssued
from loyalty_kit import ServiceApp, outbox
from loyalty_kit.auth import TenantAuth
from loyalty_kit.effects import EffectContext
from pydantic import BaseModel, Field

from loyalty_referrals import domain, store
from loyalty_referrals.handlers import Runtime, TimerRow, publish_effects, reward_id_for

DEFAULT_PERIOD = domain.REPORT_PERIOD


class CodeOut(BaseModel):
    customer_id: str
    code: str
    share_link: str
    vanity_code: str | None = None
    vanity_link: str | None = None


class RewardOut(BaseModel):
    reward_id: str
    role: Literal["referrer", "referee"]
    beneficiary_id: str
    kind: str
    points: int | None = None
    amount_minor: int | None = None
    currency: str | None = None
    perk: str | None = None
    status: str
    granted_at: datetime | None = None
    revoked_at: datetime | None = None


class ReferralOut(BaseModel):
    referral_id: str
    referrer_id: str
    referee_id: str
    source: str
    status: str
    reason: str | None = None
    reason_detail: str = ""
    order_id: str
    converted_at: datetime
    hold_until: datetime | None = None
    rewards: list[RewardOut]


class CustomerReferralsOut(BaseModel):
    customer_id: str
    as_referrer: list[ReferralOut]
    as_referee: ReferralOut | None


class FunnelOut(BaseModel):
    since: datetime
    until: datetime
    counts: dict[str, int] = Field(description="invited → registered → first_purchase → rewarded → revoked")
    rates: dict[str, float] = Field(description="each stage as a share of the stage before it")
    median_days_to_convert: float | None = Field(description="registration to qualifying first purchase")


class TopReferrerOut(BaseModel):
    referrer_id: str
    conversions: int
    rewarded: int


class RejectionReasonOut(BaseModel):
    reason: str
    fraud: bool
    count: int


class RejectionsOut(BaseModel):
    since: datetime
    until: datetime
    reasons: list[RejectionReasonOut]
    unresolved_codes: int = Field(description="codes typed in the period that no customer owns (yet)")


class SaysVsDoesOut(BaseModel):
    since: datetime
    until: datetime
    referral_within_days: int
    respondents: int
    promoters: int
    promoter_share: float = Field(description="says: share of NPS respondents scoring 9-10")
    promoters_who_referred: int
    promoter_referral_rate: float = Field(description="does: share of promoters whose friend converted")
    customers: int
    customers_who_referred: int
    customer_referral_rate: float = Field(description="baseline: share of all customers whose friend converted")
    gap: float = Field(description="says minus does")


class VanityCodeIn(BaseModel):
    code: str = Field(min_length=1, max_length=40, description="4-20 letters or digits; hyphens and spaces ignored")


class ReviewDecision(BaseModel):
    decision: Literal["approve", "reject"]
    staff: str = Field(min_length=1, max_length=100, description="Who decided (staff id, not a customer).")


def _period(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{name} must carry a UTC offset")
    end = until or datetime.now(UTC)
    start = since or end - DEFAULT_PERIOD
    if start >= end:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="since must be before until")
    if end - start > timedelta(days=3660):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the period may span at most 10 years")
    return start, end


def _referral_out(referral: domain.Referral) -> ReferralOut:
    return ReferralOut(
        referral_id=referral.referral_id,
        referrer_id=referral.referrer_id,
        referee_id=referral.referee_id,
        source=referral.source.label,
        status=referral.status.value,
        reason=referral.reason.value if referral.reason else None,
        reason_detail=referral.reason_detail,
        order_id=referral.order_id,
        converted_at=referral.converted_at,
        hold_until=referral.hold_until,
        rewards=[
            RewardOut(
                reward_id=reward_id_for(referral.referral_id, role),
                role=reward.role,
                beneficiary_id=reward.beneficiary_id,
                kind=reward.spec.kind,
                points=reward.spec.points,
                amount_minor=reward.spec.amount_minor,
                currency=reward.spec.currency,
                perk=reward.spec.perk,
                status=reward.status.value,
                granted_at=reward.granted_at,
                revoked_at=reward.revoked_at,
            )
            for role, reward in referral.rewards.items()
        ],
    )


Tenant = Annotated[str, Path(min_length=1, max_length=100)]
CustomerId = Annotated[str, Path(min_length=1, max_length=200)]
ReferralId = Annotated[str, Path(min_length=1, max_length=200)]
Since = Annotated[datetime | None, Query(description="period start (RFC 3339 with offset); default until-30d")]
Until = Annotated[datetime | None, Query(description="period end, exclusive (RFC 3339); default now")]
Limit = Annotated[int, Query(ge=1, le=100)]


def build_router(app: ServiceApp, runtime: Runtime, auth: TenantAuth) -> APIRouter:
    router = APIRouter(prefix="/referrals/v1/tenants/{tenant}", tags=["referrals"], dependencies=[Depends(auth)])

    def pool() -> asyncpg.Pool:
        if app.pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="service is starting")
        return app.pool

    def program_of(tenant: str) -> Any:
        program = runtime.programs.get(tenant)
        if program is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"tenant {tenant!r} has no referrals program")
        return program

    @router.get("/customers/{customer_id}/code", response_model=CodeOut, summary="A customer's code and link")
    async def customer_code(tenant: Tenant, customer_id: CustomerId) -> CodeOut:
        program = program_of(tenant)
        rows = await pool().fetch(
            "SELECT code, vanity FROM codes WHERE tenant = $1 AND customer_id = $2", tenant, customer_id
        )
        generated = next((r["code"] for r in rows if not r["vanity"]), None)
        vanity = next((r["code"] for r in rows if r["vanity"]), None)
        if generated is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"customer {customer_id!r} has no referral code (not registered)"
            )
        template = program.codes.link_template
        return CodeOut(
            customer_id=customer_id,
            code=generated,
            share_link=domain.share_link(template, generated),
            vanity_code=vanity,
            vanity_link=domain.share_link(template, vanity) if vanity else None,
        )

    @router.put(
        "/customers/{customer_id}/vanity-code",
        response_model=CodeOut,
        summary="Assign (or replace) a customer's vanity code; unique per tenant",
    )
    async def set_vanity_code(
        tenant: Tenant, customer_id: CustomerId, body: Annotated[VanityCodeIn, Body()]
    ) -> CodeOut:
        program = program_of(tenant)
        if not program.codes.vanity_codes:
            raise HTTPException(status.HTTP_409_CONFLICT, detail="vanity codes are disabled in this tenant's program")
        try:
            vanity = domain.validate_vanity_code(body.code)
        except domain.InvalidCode as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=exc.reason) from None
        async with pool().acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT code, vanity FROM codes WHERE tenant = $1 AND customer_id = $2 FOR UPDATE", tenant, customer_id
            )
            generated = next((r["code"] for r in rows if not r["vanity"]), None)
            if generated is None:
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND, detail=f"customer {customer_id!r} has no referral code (not registered)"
                )
            owner = await conn.fetchval("SELECT customer_id FROM codes WHERE tenant = $1 AND code = $2", tenant, vanity)
            if owner is not None and owner != customer_id:
                raise HTTPException(status.HTTP_409_CONFLICT, detail=f"code {vanity!r} is already taken in this tenant")
            if owner is None:
                await conn.execute(
                    "DELETE FROM codes WHERE tenant = $1 AND customer_id = $2 AND vanity", tenant, customer_id
                )
                await conn.execute(
                    "INSERT INTO codes (tenant, code, customer_id, vanity, created_at) "
                    "VALUES ($1, $2, $3, true, now())",
                    tenant,
                    vanity,
                    customer_id,
                )
                ctx = EffectContext(
                    conn,
                    service=app.name,
                    source=f"/loyalty/{app.name}",
                    clock=app.settings.timer_clock,
                    topic_prefix=app.settings.topic_prefix,
                )
                ctx.emit(
                    ReferralCodeIssued(
                        customer_id=customer_id,
                        occurred_at=await ctx.now_for(tenant),
                        code=vanity,
                        share_link=domain.share_link(program.codes.link_template, vanity),
                        vanity=True,
                    ),
                    tenant=tenant,
                )
                await outbox.insert(conn, ctx.outbox, app.name)
        if app.relay is not None:
            app.relay.wake()
        template = program.codes.link_template
        return CodeOut(
            customer_id=customer_id,
            code=generated,
            share_link=domain.share_link(template, generated),
            vanity_code=vanity,
            vanity_link=domain.share_link(template, vanity),
        )

    @router.get(
        "/customers/{customer_id}/referrals",
        response_model=CustomerReferralsOut,
        summary="A customer's referrals (as referrer and as referee) with statuses and rewards",
    )
    async def customer_referrals(tenant: Tenant, customer_id: CustomerId) -> CustomerReferralsOut:
        program_of(tenant)
        rows = await pool().fetch(
            f"SELECT {store._REFERRAL_COLUMNS} FROM referrals WHERE tenant = $1 AND (referrer_id = $2 "
            "OR referee_id = $2) ORDER BY converted_at DESC LIMIT 500",
            tenant,
            customer_id,
        )
        referrals = [store.referral_from_row(r) for r in rows]
        as_referee = next((r for r in referrals if r.referee_id == customer_id), None)
        return CustomerReferralsOut(
            customer_id=customer_id,
            as_referrer=[_referral_out(r) for r in referrals if r.referrer_id == customer_id],
            as_referee=_referral_out(as_referee) if as_referee else None,
        )

    @router.get("/funnel", response_model=FunnelOut, summary="Invited → registered → bought → rewarded → revoked")
    async def funnel(tenant: Tenant, since: Since = None, until: Until = None) -> FunnelOut:
        program_of(tenant)
        start, end = _period(since, until)
        row = await pool().fetchrow(
            """
            SELECT
              (SELECT count(*) FROM invitations WHERE tenant = $1 AND invited_at >= $2 AND invited_at < $3)
                AS invited,
              (SELECT count(DISTINCT cl.referee_id) FROM claims cl JOIN customers c
                 ON c.tenant = cl.tenant AND c.customer_id = cl.referee_id
               WHERE cl.tenant = $1 AND c.registered_at >= $2 AND c.registered_at < $3) AS registered,
              (SELECT count(*) FROM referrals WHERE tenant = $1 AND converted_at >= $2 AND converted_at < $3
                 AND status <> 'rejected') AS first_purchase,
              (SELECT count(*) FROM referrals WHERE tenant = $1 AND converted_at >= $2 AND converted_at < $3
                 AND status IN ('rewarded', 'revoked')) AS rewarded,
              (SELECT count(*) FROM referrals WHERE tenant = $1 AND converted_at >= $2 AND converted_at < $3
                 AND status = 'revoked') AS revoked
            """,
            tenant,
            start,
            end,
        )
        assert row is not None
        durations = await pool().fetch(
            "SELECT extract(epoch FROM r.converted_at - c.registered_at) / 86400.0 AS days FROM referrals r "
            "JOIN customers c ON c.tenant = r.tenant AND c.customer_id = r.referee_id "
            "WHERE r.tenant = $1 AND r.converted_at >= $2 AND r.converted_at < $3 AND r.status <> 'rejected'",
            tenant,
            start,
            end,
        )
        result = domain.funnel({k: int(row[k]) for k in domain.FUNNEL_STAGES}, [float(d["days"]) for d in durations])
        return FunnelOut(
            since=start,
            until=end,
            counts=result.counts,
            rates=result.rates,
            median_days_to_convert=result.median_days_to_convert,
        )

    @router.get("/top-referrers", response_model=list[TopReferrerOut], summary="Referrers with most conversions")
    async def top_referrers(
        tenant: Tenant,
        since: Since = None,
        until: Until = None,
        limit: Limit = 10,
    ) -> list[TopReferrerOut]:
        program_of(tenant)
        start, end = _period(since, until)
        rows = await pool().fetch(
            "SELECT referrer_id, count(*) AS conversions, "
            "count(*) FILTER (WHERE status IN ('rewarded', 'revoked')) AS rewarded FROM referrals "
            "WHERE tenant = $1 AND converted_at >= $2 AND converted_at < $3 AND status <> 'rejected' "
            "GROUP BY referrer_id ORDER BY conversions DESC, referrer_id LIMIT $4",
            tenant,
            start,
            end,
            limit,
        )
        return [
            TopReferrerOut(referrer_id=r["referrer_id"], conversions=r["conversions"], rewarded=r["rewarded"])
            for r in rows
        ]

    @router.get("/rejections", response_model=RejectionsOut, summary="Rejected referral claims by reason code")
    async def rejections(tenant: Tenant, since: Since = None, until: Until = None) -> RejectionsOut:
        program_of(tenant)
        start, end = _period(since, until)
        rows = await pool().fetch(
            "SELECT reason, count(*) AS n FROM rejections WHERE tenant = $1 AND rejected_at >= $2 "
            "AND rejected_at < $3 GROUP BY reason ORDER BY n DESC, reason",
            tenant,
            start,
            end,
        )
        unresolved = await pool().fetchval(
            "SELECT count(*) FROM pending_codes WHERE tenant = $1 AND claimed_at >= $2 AND claimed_at < $3",
            tenant,
            start,
            end,
        )
        return RejectionsOut(
            since=start,
            until=end,
            unresolved_codes=unresolved,
            reasons=[
                RejectionReasonOut(reason=r["reason"], fraud=domain.RejectReason(r["reason"]).fraud, count=r["n"])
                for r in rows
            ],
        )

    @router.get(
        "/says-vs-does",
        response_model=SaysVsDoesOut,
        summary="Would recommend (NPS 9-10) versus did recommend (a friend converted)",
    )
    async def says_vs_does(tenant: Tenant, since: Since = None, until: Until = None) -> SaysVsDoesOut:
        program = program_of(tenant)
        start, end = _period(since, until)
        within = program.says_vs_does.referral_within_days
        report = await store.says_vs_does_report(pool(), tenant, start, end, within)
        return SaysVsDoesOut(since=start, until=end, referral_within_days=within, **report.__dict__)

    @router.get("/reviews", response_model=list[ReferralOut], summary="Referrals held for staff review")
    async def review_queue(tenant: Tenant, limit: Limit = 100) -> list[ReferralOut]:
        program_of(tenant)
        rows = await pool().fetch(
            f"SELECT {store._REFERRAL_COLUMNS} FROM referrals WHERE tenant = $1 AND status = 'in_review' "
            "ORDER BY converted_at LIMIT $2",
            tenant,
            limit,
        )
        return [_referral_out(store.referral_from_row(r)) for r in rows]

    @router.post(
        "/reviews/{referral_id}",
        response_model=ReferralOut,
        summary="Approve (hold, then grant) or reject a referral held for review",
    )
    async def decide_review(
        tenant: Tenant,
        referral_id: ReferralId,
        decision: Annotated[ReviewDecision, Body()],
    ) -> ReferralOut:
        program = program_of(tenant)
        async with pool().acquire() as conn, conn.transaction():
            book = await store.load_referrals(conn, tenant, runtime.rules[tenant], [referral_id])
            ctx = EffectContext(
                conn,
                service=app.name,
                source=f"/loyalty/{app.name}",
                clock=app.settings.timer_clock,
                topic_prefix=app.settings.topic_prefix,
            )
            now = await ctx.now_for(tenant)
            try:
                effects = book.review(referral_id, decision.decision == "approve", decision.staff, now)
            except domain.ReviewError as exc:
                code = status.HTTP_404_NOT_FOUND if "not known" in str(exc) else status.HTTP_409_CONFLICT
                raise HTTPException(code, detail=str(exc)) from None
            rejected: list[store.RejectionRow] = []
            timers: list[TimerRow] = []
            await publish_effects(ctx, tenant, program, effects, rejected, timers)
            await ctx.schedule_many(timers)
            await store.save_referrals(conn, tenant, [book.referrals[r] for r in sorted(book.dirty_referrals)])
            await store.save_rejections(conn, tenant, rejected)
            await outbox.insert(conn, ctx.outbox, app.name)
        if app.relay is not None:
            app.relay.wake()
        referral = book.referral_by_id(referral_id)
        assert referral is not None
        return _referral_out(referral)

    return router

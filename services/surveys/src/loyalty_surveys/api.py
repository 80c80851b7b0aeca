"""HTTP API of the surveys service.

- ``POST /surveys/v1/answers``: the answer link's endpoint. The signed token is the credential (customers have
  no API key): malformed → 400, forged → 403, expired → 410, already used → 409, bad score → 422.
- Read endpoints under ``/surveys/v1/tenants/{tenant}/...`` authenticated with the tenant's API key (kit TenantAuth):
  NPS / CSAT by period and segment with the trend, response rates, cases and SLA compliance, theme
  ranking, a customer's feedback history and loyalty-account balance.
"""

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, status
from loyalty_kit import outbox
from loyalty_kit.auth import Caller, TenantAuth
from loyalty_kit.effects import ClockMode, EffectContext
from pydantic import BaseModel, ConfigDict, Field

from loyalty_surveys import domain
from loyalty_surveys.handlers import IncomingAnswer, SurveysHandlers

SERVICE = "surveys"

Segment = Literal["none", "tier", "store", "sales_channel", "category"]
SEGMENT_COLUMNS: dict[str, str] = {
    "none": "NULL::text",
    "tier": "tier",
    "store": "store_id",
    "sales_channel": "sales_channel",
    "category": "category",
}
PERIOD_UNITS: dict[str, str] = {"day": "day", "week": "week", "month": "month"}

TOKEN_STATUS = {
    domain.TokenRejection.MALFORMED: status.HTTP_400_BAD_REQUEST,
    domain.TokenRejection.FORGED: status.HTTP_403_FORBIDDEN,
    domain.TokenRejection.EXPIRED: status.HTTP_410_GONE,
    domain.TokenRejection.REUSED: status.HTTP_409_CONFLICT,
}


class AnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=2048, description="The token from the answer link.")
    score: int = Field(description="0–10 for NPS, 1–5 for CSAT and one-question surveys.")
    comment: str | None = Field(default=None, max_length=4000)


class AnswerOut(BaseModel):
    feedback_id: str
    request_id: str


class ScoreBucket(BaseModel):
    period_start: date
    segment: str | None
    responses: int
    promoters: int
    passives: int
    detractors: int
    nps: float | None = Field(description="NPS (−100…100) for NPS surveys; CSAT % (satisfied share) for CSAT.")
    mean: float | None
    trend: float | None = Field(description="Change against the previous period of the same segment.")


class ScoresOut(BaseModel):
    tenant: str
    kind: Literal["nps", "csat"]
    period: str
    segment: str
    buckets: list[ScoreBucket]


class ResponseRateOut(BaseModel):
    tenant: str
    requested: int
    answered: int
    suppressed: int = Field(description="Decided against by the notifier (contact budget, consent, cap).")
    undelivered: int = Field(description="Tried by the notifier and failed.")
    skipped_recontact: int = Field(description="Not sent: within the recontact period of another survey.")
    response_rate: float | None = Field(description="answered / (requested − suppressed − undelivered).")


class CaseOut(BaseModel):
    case_id: str
    customer_id: str
    queue: str
    score: int
    status: str
    opened_at: datetime
    deadline_at: datetime
    breached: bool
    resolved_at: datetime | None
    seconds_to_resolve: int | None
    within_deadline: bool | None


class CasesOut(BaseModel):
    tenant: str
    open: int
    resolved_within_deadline: int
    resolved_late: int
    open_breached: int
    sla_compliance: float | None
    cases: list[CaseOut]


class ThemeOut(BaseModel):
    theme: str
    mentions: int
    detractor_share: float


class FeedbackOut(BaseModel):
    feedback_id: str
    survey_id: str
    kind: str
    score: int
    comment: str | None
    themes: list[str]
    answered_at: datetime


class CustomerOut(BaseModel):
    tenant: str
    customer_id: str
    balance: int
    at_risk: bool
    feedback: list[FeedbackOut]
    entries: list[dict[str, Any]]


def build_router(
    pool: Callable[[], asyncpg.Pool],
    handlers: SurveysHandlers,
    auth: TenantAuth,
    *,
    service: str = SERVICE,
    clock: ClockMode = "wall",
    topic_prefix: str = "",
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> APIRouter:
    """Routers read and write the service's schema through `pool()` (set once the app started)."""
    router = APIRouter(prefix="/surveys/v1", tags=["surveys"])
    Authed = Annotated[Caller, Depends(auth)]

    def db() -> asyncpg.Pool:
        p = pool()
        if p is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="service is starting")
        return p

    @router.post(
        "/answers",
        response_model=AnswerOut,
        status_code=status.HTTP_201_CREATED,
        responses={400: {}, 403: {}, 404: {}, 409: {}, 410: {}, 422: {}},
    )
    async def answer(body: AnswerIn) -> AnswerOut:
        """Record an answer given through the signed link; it becomes FeedbackReceived."""
        moment = now()
        try:
            tenant = domain.token_tenant(body.token)
            config = handlers.configs.get(tenant)
            if config is None:
                raise domain.TokenRejected(domain.TokenRejection.FORGED, "the token names an unknown tenant")
            claims = domain.verify_token(body.token, config.secrets, moment)
        except domain.TokenRejected as exc:
            raise HTTPException(TOKEN_STATUS[exc.reason], detail=f"token {exc.reason.value}: {exc.detail}") from exc
        async with db().acquire() as conn, conn.transaction():
            ctx = EffectContext(
                conn, service=service, source=f"/loyalty/{service}", clock=clock, topic_prefix=topic_prefix
            )
            [result] = await handlers.apply_answers(
                ctx,
                [
                    IncomingAnswer(
                        tenant=claims.tenant,
                        request_id=claims.request_id,
                        score=body.score,
                        comment=body.comment,
                        answered_at=moment,
                        channel="web",
                        survey_id=claims.survey_id,
                        customer_id=claims.customer_id,
                    )
                ],
            )
            if result.accepted:
                await outbox.insert(conn, ctx.outbox, service)
        if result.reason == "reused":
            raise HTTPException(status.HTTP_409_CONFLICT, detail="token reused: this survey was already answered")
        if result.reason == "unknown_request":
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such survey request")
        if not result.accepted:
            raise HTTPException(422, detail=result.reason)
        assert result.feedback_id is not None
        return AnswerOut(feedback_id=result.feedback_id, request_id=claims.request_id)

    async def scores(
        tenant: str,
        kind: Literal["nps", "csat"],
        period: str,
        segment: str,
        since: datetime | None,
        until: datetime | None,
    ) -> ScoresOut:
        zone = handlers.config(tenant).calendar.zone
        column = SEGMENT_COLUMNS[segment]
        rows = await db().fetch(
            f"""
            SELECT (date_trunc($2, answered_at AT TIME ZONE $3))::date AS bucket, {column} AS segment,
                   count(*) AS responses, sum(score) AS score_sum,
                   count(*) FILTER (WHERE sentiment = 'promoter') AS promoters,
                   count(*) FILTER (WHERE sentiment = 'passive') AS passives,
                   count(*) FILTER (WHERE sentiment = 'detractor') AS detractors
            FROM feedback
            WHERE tenant = $1 AND kind = $4 AND ($5::timestamptz IS NULL OR answered_at >= $5)
                  AND ($6::timestamptz IS NULL OR answered_at < $6)
            GROUP BY 1, 2 ORDER BY 2 NULLS FIRST, 1
            """,
            tenant,
            PERIOD_UNITS[period],
            zone.key,
            kind,
            since,
            until,
        )
        history: dict[str | None, list[float | None]] = defaultdict(list)
        buckets: list[ScoreBucket] = []
        for r in rows:
            if kind == "nps":
                value = domain.NpsSummary(r["responses"], r["promoters"], r["passives"], r["detractors"]).nps
            else:
                value = domain.CsatSummary(r["responses"], r["promoters"], r["score_sum"]).csat
            series = history[r["segment"]]
            series.append(value)
            buckets.append(
                ScoreBucket(
                    period_start=r["bucket"],
                    segment=r["segment"],
                    responses=r["responses"],
                    promoters=r["promoters"],
                    passives=r["passives"],
                    detractors=r["detractors"],
                    nps=value,
                    mean=r["score_sum"] / r["responses"] if r["responses"] else None,
                    trend=domain.trend(series),
                )
            )
        return ScoresOut(tenant=tenant, kind=kind, period=period, segment=segment, buckets=buckets)

    @router.get("/tenants/{tenant}/nps", response_model=ScoresOut)
    async def nps(
        tenant: str,
        caller: Authed,
        period: Annotated[Literal["day", "week", "month"], Query()] = "week",
        segment: Annotated[Segment, Query()] = "none",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ScoresOut:
        """NPS per period (in the retailer's time zone) and segment, with the change against the previous period."""
        _check_range(since, until)
        return await scores(tenant, "nps", period, segment, since, until)

    @router.get("/tenants/{tenant}/csat", response_model=ScoresOut)
    async def csat(
        tenant: str,
        caller: Authed,
        period: Annotated[Literal["day", "week", "month"], Query()] = "week",
        segment: Annotated[Segment, Query()] = "none",
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ScoresOut:
        """CSAT (share of 4–5 answers, in %) per period and segment; `promoters` counts the 4–5 answers."""
        _check_range(since, until)
        return await scores(tenant, "csat", period, segment, since, until)

    @router.get("/tenants/{tenant}/response-rate", response_model=ResponseRateOut)
    async def response_rate(tenant: str, caller: Authed, survey_id: str | None = None) -> ResponseRateOut:
        """Answered share of surveys that reached the customer (suppressed ones are not 'unanswered').

        Counts surveys, not the follow-up questions that some answers lead to."""
        r = await db().fetchrow(
            """
            SELECT count(*) FILTER (WHERE status IN ('requested', 'answered', 'suppressed', 'undelivered'))
                       AS requested,
                   count(*) FILTER (WHERE status = 'answered') AS answered,
                   count(*) FILTER (WHERE status = 'suppressed') AS suppressed,
                   count(*) FILTER (WHERE status = 'undelivered') AS undelivered,
                   count(*) FILTER (WHERE status = 'skipped_recontact') AS skipped
            FROM survey_requests
            WHERE tenant = $1 AND ($2::text IS NULL OR survey_id = $2) AND parent_feedback_id IS NULL
            """,
            tenant,
            survey_id,
        )
        assert r is not None
        return ResponseRateOut(
            tenant=tenant,
            requested=r["requested"],
            answered=r["answered"],
            suppressed=r["suppressed"],
            undelivered=r["undelivered"],
            skipped_recontact=r["skipped"],
            response_rate=domain.response_rate(r["requested"], r["answered"], r["suppressed"] + r["undelivered"]),
        )

    @router.get("/tenants/{tenant}/cases", response_model=CasesOut)
    async def cases(
        tenant: str,
        caller: Authed,
        case_status: Annotated[Literal["open", "resolved", "all"], Query(alias="status")] = "open",
        queue: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> CasesOut:
        """Cases (the assignment queue: oldest deadline first) and SLA compliance of the tenant."""
        conn_pool = db()
        summary = await conn_pool.fetchrow(
            """
            SELECT count(*) FILTER (WHERE status = 'open') AS open,
                   count(*) FILTER (WHERE status = 'resolved' AND within_deadline) AS within,
                   count(*) FILTER (WHERE status = 'resolved' AND NOT within_deadline) AS late,
                   count(*) FILTER (WHERE status = 'open' AND breached) AS open_breached
            FROM cases WHERE tenant = $1 AND ($2::text IS NULL OR queue = $2)
            """,
            tenant,
            queue,
        )
        assert summary is not None
        rows = await conn_pool.fetch(
            """
            SELECT * FROM cases WHERE tenant = $1 AND ($2::text IS NULL OR queue = $2)
                AND ($3 = 'all' OR status = $3)
            ORDER BY deadline_at, case_id LIMIT $4
            """,
            tenant,
            queue,
            case_status,
            limit,
        )
        return CasesOut(
            tenant=tenant,
            open=summary["open"],
            resolved_within_deadline=summary["within"],
            resolved_late=summary["late"],
            open_breached=summary["open_breached"],
            sla_compliance=domain.sla_compliance(summary["within"], summary["late"], summary["open_breached"]),
            # The view's fields are columns of the same name (the row's other columns are left out).
            cases=[CaseOut.model_validate(dict(r)) for r in rows],
        )

    @router.get("/tenants/{tenant}/themes", response_model=list[ThemeOut])
    async def themes(tenant: str, caller: Authed, since: datetime | None = None) -> list[ThemeOut]:
        """Themes ranked by mentions, with the share of detractor answers among them."""
        rows = await db().fetch(
            """
            SELECT theme, count(*) AS mentions, avg((sentiment = 'detractor')::int) AS detractor_share
            FROM feedback, unnest(themes) AS theme
            WHERE tenant = $1 AND ($2::timestamptz IS NULL OR answered_at >= $2)
            GROUP BY theme ORDER BY mentions DESC, theme
            """,
            tenant,
            since,
        )
        return [
            ThemeOut(theme=r["theme"], mentions=r["mentions"], detractor_share=float(r["detractor_share"]))
            for r in rows
        ]

    @router.get("/tenants/{tenant}/customers/{customer_id}", response_model=CustomerOut, responses={404: {}})
    async def customer(tenant: str, customer_id: str, caller: Authed) -> CustomerOut:
        """A customer's feedback history and loyalty account (balance and entries, newest first)."""
        conn_pool = db()
        account = await conn_pool.fetchrow(
            "SELECT balance, at_risk FROM customers WHERE tenant = $1 AND customer_id = $2", tenant, customer_id
        )
        feedback = await conn_pool.fetch(
            "SELECT * FROM feedback WHERE tenant = $1 AND customer_id = $2 ORDER BY answered_at DESC LIMIT 200",
            tenant,
            customer_id,
        )
        if account is None and not feedback:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no customer {customer_id!r} in tenant {tenant!r}")
        entries = await conn_pool.fetch(
            "SELECT fact, amount, booked_at FROM account_entries WHERE tenant = $1 AND customer_id = $2 "
            "ORDER BY booked_at DESC LIMIT 200",
            tenant,
            customer_id,
        )
        opening = handlers.config(tenant).program.loyalty_account.opening_balance
        return CustomerOut(
            tenant=tenant,
            customer_id=customer_id,
            balance=account["balance"] if account else opening,
            at_risk=account["at_risk"] if account else False,
            feedback=[FeedbackOut.model_validate(dict(f)) for f in feedback],  # fields = same-named columns
            entries=[{"fact": e["fact"], "amount": e["amount"], "booked_at": e["booked_at"]} for e in entries],
        )

    return router


def _check_range(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, detail=f"{name} needs a UTC offset, e.g. 2026-11-01T00:00:00Z"
            )
    if since is not None and until is not None and until <= since:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="until must be after since")

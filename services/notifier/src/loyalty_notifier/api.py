"""Read API (per tenant, `Authorization: Bearer <key>` via the kit's tenant auth) plus the one write a
partner needs: re-enabling a webhook endpoint the notifier disabled after repeated failures."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from loyalty_kit.auth import Caller, TenantAuth
from pydantic import BaseModel

from loyalty_notifier import store
from loyalty_notifier.domain import EndpointHealth, recipient_hash, reenable_endpoint

if TYPE_CHECKING:
    from loyalty_notifier.app import NotifierApp


class DeliveryView(BaseModel):
    notification_id: str
    source_event_id: str
    source_event_type: str
    channel: str
    recipient_hash: str
    template: str
    category: str
    status: str
    attempts: int
    due_at: datetime
    finished_at: datetime | None
    last_error: str | None


class SuppressionView(BaseModel):
    source_event_id: str
    source_event_type: str
    template: str | None
    category: str | None
    reason: str
    detail: str | None
    at: datetime


class PreferencesView(BaseModel):
    customer_id: str
    locale: str | None
    time_zone: str | None
    channels: list[str]
    consents: dict[str, bool]
    channel_consents: dict[str, bool]


class AttemptView(BaseModel):
    attempt: int
    at: datetime
    ok: bool
    failure_kind: str | None
    status_code: int | None
    detail: str | None


class WebhookDeliveryView(BaseModel):
    notification_id: str
    source_event_type: str
    status: str
    attempts: list[AttemptView]


class EndpointView(BaseModel):
    endpoint_id: str
    url: str
    event_types: list[str]
    consecutive_failures: int
    disabled: bool


class ResendRequest(BaseModel):
    notification_ids: list[str] | None = None
    all_failed: bool = False
    since: datetime | None = None


class ResendView(BaseModel):
    resent: list[str]


class PreviewView(BaseModel):
    subject: str
    text: str
    html: str
    sms: str


def build_router(app: NotifierApp) -> APIRouter:
    router = APIRouter(prefix="/notifier/v1/tenants/{tenant}", tags=["notifier"])
    auth = TenantAuth({name: t.header for name, t in app.tenants.items()})

    def pool() -> Any:
        if app.pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="service not started")
        return app.pool

    def hash_key() -> bytes:
        return app.sender.hash_key if app.sender else b""

    @router.get("/customers/{customer_id}/deliveries", response_model=list[DeliveryView])
    async def deliveries(
        tenant: str, customer_id: str, limit: int = Query(50, ge=1, le=500), caller: Caller = Depends(auth)
    ) -> list[DeliveryView]:
        """Messages planned or sent to one customer, newest first (recipients as keyed hashes only)."""
        rows = await pool().fetch(
            "SELECT * FROM deliveries WHERE tenant = $1 AND customer_id = $2 ORDER BY created_at DESC, id DESC "
            "LIMIT $3",
            tenant,
            customer_id,
            limit,
        )
        # The view's fields are columns of the same name, but the recipient is shown only as its keyed hash.
        return [
            DeliveryView.model_validate({**r, "recipient_hash": recipient_hash(r["recipient"], hash_key())})
            for r in rows
        ]

    @router.get("/customers/{customer_id}/suppressions", response_model=list[SuppressionView])
    async def suppressions(
        tenant: str, customer_id: str, limit: int = Query(50, ge=1, le=500), caller: Caller = Depends(auth)
    ) -> list[SuppressionView]:
        """Messages decided against, with the reason (consent, budget, caps, no contact, journey)."""
        rows = await pool().fetch(
            "SELECT * FROM suppressions WHERE tenant = $1 AND customer_id = $2 ORDER BY at DESC, id DESC LIMIT $3",
            tenant,
            customer_id,
            limit,
        )
        return [SuppressionView.model_validate(dict(r)) for r in rows]  # fields = same-named columns

    @router.get("/customers/{customer_id}/preferences", response_model=PreferencesView)
    async def preferences(tenant: str, customer_id: str, caller: Caller = Depends(auth)) -> PreferencesView:
        """What the notifier knows about reaching a customer (which channels, not the addresses)."""
        async with pool().acquire() as conn:
            found = await store.load_customers(conn, [(tenant, customer_id)])
        row = found.get((tenant, customer_id))
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no customer {customer_id!r} in {tenant!r}")
        p = row.profile
        return PreferencesView(
            customer_id=customer_id,
            locale=p.locale,
            time_zone=p.timezone,
            channels=sorted(c.value for c in p.contacts),
            consents={c.value: v.granted for c, v in p.consents.items()},
            channel_consents={f"{c.value}/{ch.value}": v.granted for (c, ch), v in p.channel_consents.items()},
        )

    def endpoint_config(tenant: str, endpoint_id: str) -> Any:
        for hook in app.tenants[tenant].program.webhooks:
            if hook.id == endpoint_id:
                return hook
        known = [h.id for h in app.tenants[tenant].program.webhooks]
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no webhook endpoint {endpoint_id!r}; known: {known}")

    @router.get("/webhooks", response_model=list[EndpointView])
    async def endpoints(tenant: str, caller: Caller = Depends(auth)) -> list[EndpointView]:
        """Partner endpoints with their health (disabled after repeated failures)."""
        hooks = app.tenants[tenant].program.webhooks
        async with pool().acquire() as conn:
            health = await store.endpoint_health(conn, [(tenant, h.id) for h in hooks])
        return [
            EndpointView(
                endpoint_id=h.id,
                url=h.url,
                event_types=h.event_types,
                consecutive_failures=health[(tenant, h.id)].consecutive_failures,
                disabled=health[(tenant, h.id)].disabled,
            )
            for h in hooks
        ]

    @router.get("/webhooks/{endpoint_id}/deliveries", response_model=list[WebhookDeliveryView])
    async def webhook_log(
        tenant: str, endpoint_id: str, limit: int = Query(50, ge=1, le=500), caller: Caller = Depends(auth)
    ) -> list[WebhookDeliveryView]:
        """The delivery log of one endpoint: every attempt with status code and outcome."""
        endpoint_config(tenant, endpoint_id)
        rows = await pool().fetch(
            """
            SELECT d.notification_id, d.source_event_type, d.status,
                   coalesce(json_agg(json_build_object('attempt', a.attempt, 'at', a.at, 'ok', a.ok,
                            'failure_kind', a.failure_kind, 'status_code', a.status_code, 'detail', a.detail)
                            ORDER BY a.attempt) FILTER (WHERE a.id IS NOT NULL), '[]')::text AS attempts
            FROM deliveries d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id
            WHERE d.tenant = $1 AND d.endpoint_id = $2
            GROUP BY d.id ORDER BY d.id DESC LIMIT $3
            """,
            tenant,
            endpoint_id,
            limit,
        )
        return [
            WebhookDeliveryView(
                notification_id=r["notification_id"],
                source_event_type=r["source_event_type"],
                status=r["status"],
                attempts=[AttemptView(**a) for a in json.loads(r["attempts"])],
            )
            for r in rows
        ]

    @router.post("/webhooks/{endpoint_id}/enable", response_model=EndpointView)
    async def enable(tenant: str, endpoint_id: str, caller: Caller = Depends(auth)) -> EndpointView:
        """Re-enable an endpoint after the partner fixed it (new deliveries flow again)."""
        hook = endpoint_config(tenant, endpoint_id)
        async with pool().acquire() as conn:
            health = reenable_endpoint(EndpointHealth(0, True))
            await store.save_endpoint_health(conn, {(tenant, endpoint_id): health})
        return EndpointView(
            endpoint_id=hook.id, url=hook.url, event_types=hook.event_types, consecutive_failures=0, disabled=False
        )

    @router.post("/deliveries/resend", response_model=ResendView)
    async def resend(tenant: str, request: ResendRequest, caller: Caller = Depends(auth)) -> ResendView:
        """Resend messages that finally failed (after the provider was fixed): by notification id, or every
        failed one (optionally since a time). Delivered messages are never resent."""
        if not request.notification_ids and not request.all_failed:
            raise HTTPException(422, detail="give notification_ids or all_failed: true")
        ids = None if request.all_failed else request.notification_ids
        async with pool().acquire() as conn:
            resent = await store.resend_failed(conn, tenant, ids, since=request.since)
        return ResendView(resent=resent)

    @router.get("/preview", response_model=PreviewView)
    async def preview(
        tenant: str,
        event_type: str = Query(description="an event name (TierChanged) or journey:<name>:<step>"),
        locale: str = Query(description="one of the program's locales"),
        caller: Caller = Depends(auth),
    ) -> PreviewView:
        """Render the message a sample event becomes, in one locale."""
        from loyalty_notifier.config import preview_tenant

        try:
            message = preview_tenant(app.tenants[tenant], event_type, locale)
        except KeyError as exc:
            raise HTTPException(422, detail=str(exc.args[0])) from exc
        return PreviewView(**message.to_json())

    return router

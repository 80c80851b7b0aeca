"""The answer endpoint rejects bad tokens before touching the database; start-up refuses a missing secret."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from loyalty_kit.auth import TenantAuth
from loyalty_kit.settings import ServiceSettings
from loyalty_surveys import domain
from loyalty_surveys.api import build_router
from loyalty_surveys.app import build_app
from loyalty_surveys.handlers import MissingTokenSecret, SurveysHandlers, tenant_configs

from .helpers import EXAMPLE_PROGRAM, example_program

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SECRET_ENV = {"LOYALTY_SURVEYS_TOKEN_SECRET_ACME_DIY": "new-secret,old-secret"}


def client() -> httpx.AsyncClient:
    configs = tenant_configs({"acme-diy": example_program()}, {"acme-diy": "en"}, SECRET_ENV)
    api = FastAPI()
    # No pool: every request here must be answered before the database is needed.
    api.include_router(build_router(lambda: None, SurveysHandlers(configs), TenantAuth({}), now=lambda: NOW))  # type: ignore[arg-type,return-value]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://svc")


def token(secret: bytes, expires_at: datetime, tenant: str = "acme-diy") -> str:
    claims = domain.TokenClaims(tenant, "req-1", "c-1", "delivery-csat", "csat", expires_at)
    return domain.issue_token(claims, secret)


@pytest.mark.parametrize(
    ("make_token", "status", "reason"),
    [
        (lambda: token(b"old-secret", NOW), 410, "expired"),
        (lambda: token(b"attacker", NOW + timedelta(days=1)), 403, "forged"),
        (lambda: token(b"new-secret", NOW + timedelta(days=1), tenant="other-shop"), 403, "unknown tenant"),
        (lambda: "definitely not a token", 400, "malformed"),
    ],
)
async def test_bad_tokens_get_4xx_with_the_reason(make_token: object, status: int, reason: str) -> None:
    async with client() as c:
        response = await c.post("/surveys/v1/answers", json={"token": make_token(), "score": 4})  # type: ignore[operator]
    assert response.status_code == status
    assert reason in response.json()["detail"]


async def test_a_rotated_secret_still_verifies_until_it_reaches_the_database() -> None:
    # Signed with the old secret (second in the list): passes verification and needs the DB, which is absent.
    async with client() as c:
        response = await c.post(
            "/surveys/v1/answers", json={"token": token(b"old-secret", NOW + timedelta(1)), "score": 4}
        )
    assert response.status_code == 503 and "starting" in response.json()["detail"]


async def test_body_is_validated() -> None:
    async with client() as c:
        response = await c.post("/surveys/v1/answers", json={"token": "x.y", "score": "four", "extra": 1})
    assert response.status_code == 422


def test_missing_secret_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(MissingTokenSecret, match="LOYALTY_SURVEYS_TOKEN_SECRET_ACME_DIY"):
        tenant_configs({"acme-diy": example_program()}, {"acme-diy": "en"}, {})
    configs = tenant_configs({"acme-diy": example_program()}, {"acme-diy": "en"}, SECRET_ENV)
    assert configs["acme-diy"].secrets == (b"new-secret", b"old-secret")
    assert configs["acme-diy"].signing_secret == b"new-secret"


def test_openapi_publishes_every_endpoint(tmp_path: Path) -> None:
    (tmp_path / "acme-diy.yaml").write_text(EXAMPLE_PROGRAM.read_text())
    settings = ServiceSettings(service="surveys", programs_dir=tmp_path)
    app, _ = build_app(settings, environ=SECRET_ENV)
    spec = app.asgi().openapi()
    assert set(spec["paths"]) == {
        "/surveys/v1/answers",
        "/surveys/v1/tenants/{tenant}/nps",
        "/surveys/v1/tenants/{tenant}/csat",
        "/surveys/v1/tenants/{tenant}/response-rate",
        "/surveys/v1/tenants/{tenant}/cases",
        "/surveys/v1/tenants/{tenant}/themes",
        "/surveys/v1/tenants/{tenant}/customers/{customer_id}",
    }
    answer = spec["paths"]["/surveys/v1/answers"]["post"]
    assert {"201", "400", "403", "409", "410", "422"} <= set(answer["responses"])

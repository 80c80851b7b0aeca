"""Tenant authentication for read APIs: ``Authorization: Bearer <key>`` → tenant.

Program files hold only SHA-256 hashes of keys. A key authenticates exactly one tenant; a route that
names a tenant (path parameter ``tenant``) refuses keys of other tenants with 403.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from loyalty_kit.programs import ProgramHeader


@dataclass(frozen=True)
class Caller:
    tenant: str
    key_name: str


class TenantAuth:
    """FastAPI dependency: ``caller: Caller = Depends(auth)``."""

    def __init__(self, headers: Mapping[str, ProgramHeader]) -> None:
        self._by_hash: dict[str, Caller] = {}
        for tenant, header in headers.items():
            for key in header.api_keys:
                self._by_hash[key.sha256] = Caller(tenant=tenant, key_name=key.name)

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing Authorization header (expected 'Bearer <api key>')",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="Authorization header must be 'Bearer <api key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        for known, caller in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return caller
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail="unknown API key", headers={"WWW-Authenticate": "Bearer"}
        )

    def __call__(self, request: Request) -> Caller:
        caller = self.authenticate(request.headers.get("authorization"))
        wanted = request.path_params.get("tenant")
        if wanted is not None and wanted != caller.tenant:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"this API key belongs to another tenant, not {wanted!r}"
            )
        return caller


def tenant_auth(headers: Mapping[str, ProgramHeader]) -> Callable[[Request], Caller]:
    return TenantAuth(headers)

"""Ops helpers behind the CLI: where the running services listen, and one customer seen across all of them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from .services import SERVICES

SERVICES_FILE = "services.json"

# What `loyalty inspect` asks each service's read API for (paths relative to the service's base URL).
CUSTOMER_VIEWS: dict[str, dict[str, str]] = {
    "tiers": {
        "status": "/tiers/v1/tenants/{tenant}/customers/{customer}/status",
        "history": "/tiers/v1/tenants/{tenant}/customers/{customer}/history",
        "ledger": "/tiers/v1/tenants/{tenant}/customers/{customer}/ledger",
    },
    "referrals": {
        "code": "/referrals/v1/tenants/{tenant}/customers/{customer}/code",
        "referrals": "/referrals/v1/tenants/{tenant}/customers/{customer}/referrals",
    },
    "surveys": {
        "feedback_and_loyalty_account": "/surveys/v1/tenants/{tenant}/customers/{customer}",
    },
    "notifier": {
        "preferences": "/notifier/v1/tenants/{tenant}/customers/{customer}/preferences",
        "deliveries": "/notifier/v1/tenants/{tenant}/customers/{customer}/deliveries",
        "suppressions": "/notifier/v1/tenants/{tenant}/customers/{customer}/suppressions",
    },
}


def write_service_urls(stack_root: Path, urls: Mapping[str, str]) -> Path:
    path = stack_root / SERVICES_FILE
    path.write_text(json.dumps(dict(urls), indent=2))
    return path


def service_urls(stack_root: Path) -> dict[str, str]:
    """Base URL per service: ``LOYALTY_<SERVICE>_URL`` wins, else what a running `loyalty run` recorded."""
    recorded: dict[str, str] = {}
    try:
        recorded = json.loads((stack_root / SERVICES_FILE).read_text())
    except (OSError, ValueError):
        pass
    urls = {}
    for name in SERVICES:
        url = os.environ.get(f"LOYALTY_{name.upper()}_URL") or recorded.get(name)
        if url:
            urls[name] = url.rstrip("/")
    return urls


def inspect_customer(urls: Mapping[str, str], tenant: str, customer: str, api_key: str,
                     timeout_s: float = 5.0) -> dict[str, Any]:
    """Everything the services know about one customer, through their authenticated read APIs."""
    out: dict[str, Any] = {"tenant": tenant, "customer": customer}
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(headers=headers, timeout=timeout_s) as client:
        for service, views in CUSTOMER_VIEWS.items():
            base = urls.get(service)
            if base is None:
                out[service] = {"error": f"no URL for {service} (set LOYALTY_{service.upper()}_URL)"}
                continue
            section: dict[str, Any] = {}
            for view, template in views.items():
                url = base + template.format(tenant=tenant, customer=customer)
                try:
                    resp = client.get(url)
                except httpx.HTTPError as exc:
                    section[view] = {"error": f"{type(exc).__name__} calling {url}"}
                    continue
                if resp.status_code == 200:
                    section[view] = resp.json()
                else:
                    section[view] = {"status": resp.status_code, "error": _detail(resp)}
            out[service] = section
    return out


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return json.dumps(body)[:300]

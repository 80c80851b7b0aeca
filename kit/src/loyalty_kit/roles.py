"""Provision a service's Postgres role and schema: the role owns its schema and nothing else."""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from loyalty_kit.db import check_identifier, quote_ident


def derived_password(admin_dsn: str, service: str) -> str:
    """A stable per-service password for local stacks: secret as long as the admin DSN is."""
    return hashlib.sha256(f"loyalty-role:{service}:{admin_dsn}".encode()).hexdigest()[:32]


def service_dsn(admin_dsn: str, role: str, password: str) -> str:
    """The admin DSN with user and password replaced (host, port, database and query kept)."""
    parts = urlsplit(admin_dsn)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def provision(admin_dsn: str, service: str, password: str | None = None) -> str:
    """Create/refresh role ``<service>`` and schema ``<service>`` it owns; return the service's DSN.

    The role gets LOGIN, CONNECT and TEMP on the database and ownership of its schema; nothing on any other
    schema (other services' schemas are owned by their roles and never granted), and CREATE on ``public`` is
    revoked from PUBLIC so no service can create objects outside its schema. Idempotent.
    """
    check_identifier(service)
    password = password or derived_password(admin_dsn, service)
    role = quote_ident(service)
    conn = await asyncpg.connect(admin_dsn)
    try:
        async with conn.transaction():
            # Serialise concurrent provisioning (CREATE ROLE races raise unique violations).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('loyalty-provision'))")
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", service)
            verb = "ALTER" if exists else "CREATE"
            # Passwords cannot be bind parameters in DDL; quote_literal via format() does the escaping.
            literal = await conn.fetchval("SELECT quote_literal($1)", password)
            await conn.execute(
                f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD {literal}"
            )
            database = await conn.fetchval("SELECT current_database()")
            q_db = '"' + database.replace('"', '""') + '"'
            await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            await conn.execute(f"REVOKE ALL ON DATABASE {q_db} FROM PUBLIC")
            await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {q_db} TO {role}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {role} AUTHORIZATION {role}")
            await conn.execute(f"ALTER SCHEMA {role} OWNER TO {role}")
            await conn.execute(f"REVOKE ALL ON SCHEMA {role} FROM PUBLIC")
            await conn.execute(f"ALTER ROLE {role} SET search_path = {role}")
    finally:
        await conn.close()
    return service_dsn(admin_dsn, service, password)


def new_password() -> str:
    return secrets.token_urlsafe(24)

"""Apply one service's migrations (the kit's tables, then the service's own) and exit.

Runs as the service's own role (LOYALTY_PG_DSN, password from PGPASSWORD when the DSN has none), so it can
only touch the service's schema. Safe to run concurrently: the kit takes an advisory lock per schema.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from pathlib import Path

SERVICES = ("tiers", "referrals", "surveys", "notifier")


async def migrate(service: str, dsn: str) -> list[str]:
    import asyncpg
    from loyalty_kit import migrations

    module = importlib.import_module(f"loyalty_{service}")
    package_dir = Path(module.__file__ or "").parent
    service_dir = package_dir / "migrations"
    conn = await asyncpg.connect(dsn)
    try:
        return await migrations.apply(conn, service, service_dir if service_dir.is_dir() else None)
    finally:
        await conn.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SERVICES:
        print(f"usage: migrate.py {{{'|'.join(SERVICES)}}}", file=sys.stderr)
        return 64
    dsn = os.environ.get("LOYALTY_PG_DSN")
    if not dsn:
        print("migrate.py: LOYALTY_PG_DSN is not set", file=sys.stderr)
        return 78
    applied = asyncio.run(migrate(argv[0], dsn))
    print(f"{argv[0]}: applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

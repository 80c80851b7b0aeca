"""`python -m loyalty_notifier` runs the service (validate programs and templates, then serve and consume).

Two operator commands live here too, for the suite's CLI to delegate to:
    python -m loyalty_notifier preview --tenant acme-diy --event-type TierChanged --locale ru [--programs DIR]
    python -m loyalty_notifier resend --tenant acme-diy (--id NOTIFICATION_ID ... | --all-failed [--since ISO])
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime

from loyalty_kit.programs import ProgramFileInvalid


def preview_command(args: argparse.Namespace) -> int:
    from loyalty_notifier.config import preview

    try:
        message = preview(args.programs, args.tenant, args.event_type, args.locale)
    except ProgramFileInvalid as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(f"Subject: {message.subject}\n\n{message.text}")
    if args.html:
        print(f"\n--- html ---\n{message.html}")
    print(f"\n--- sms ---\n{message.sms}")
    return 0


async def _resend(args: argparse.Namespace) -> list[str]:
    from loyalty_kit.db import create_pool

    from loyalty_notifier import store
    from loyalty_notifier.app import NotifierSettings

    settings = NotifierSettings()
    pool = await create_pool(settings.pg_dsn, "notifier", min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            ids = None if args.all_failed else args.id
            since = datetime.fromisoformat(args.since) if args.since else None
            return await store.resend_failed(conn, args.tenant, ids, since=since)
    finally:
        await pool.close()


def resend_command(args: argparse.Namespace) -> int:
    if not args.id and not args.all_failed:
        print("error: give --id (repeatable) or --all-failed", file=sys.stderr)
        return 2
    resent = asyncio.run(_resend(args))
    for notification_id in resent:
        print(notification_id)
    print(f"{len(resent)} failed deliveries set to resend", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loyalty_notifier", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    p = commands.add_parser("preview", help="render the message a sample event becomes")
    p.add_argument("--tenant", required=True)
    p.add_argument("--event-type", required=True, help="TierChanged, or journey:<name>:<step>")
    p.add_argument("--locale", required=True)
    p.add_argument("--programs", default="programs", help="program files folder (default: programs)")
    p.add_argument("--html", action="store_true", help="also print the HTML part")
    r = commands.add_parser("resend", help="resend deliveries that finally failed (LOYALTY_PG_DSN)")
    r.add_argument("--tenant", required=True)
    r.add_argument("--id", action="append", help="notification id (repeatable)")
    r.add_argument("--all-failed", action="store_true")
    r.add_argument("--since", help="with --all-failed: only those that failed after this ISO time")
    args = parser.parse_args(argv)
    if args.command == "preview":
        raise SystemExit(preview_command(args))
    if args.command == "resend":
        raise SystemExit(resend_command(args))

    from loyalty_notifier.app import build_app

    try:
        app = build_app()
    except ProgramFileInvalid as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc
    app.run()


if __name__ == "__main__":
    main()

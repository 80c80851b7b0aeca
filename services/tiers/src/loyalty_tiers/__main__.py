"""``python -m loyalty_tiers``: validate program files, then serve the consumer, timers and read API.

``python -m loyalty_tiers recalc <tenant> <version> [--force]`` replays a tenant's customers under a new
program version (the same function ``loyalty tiers recalc`` calls).
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loyalty_tiers", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the service (default)")
    recalc = sub.add_parser("recalc", help="replay a tenant's customers under a new program version")
    recalc.add_argument("tenant")
    recalc.add_argument("version", type=int)
    recalc.add_argument("--force", action="store_true", help="also customers already on that version")
    args = parser.parse_args(argv)
    if args.command == "recalc":
        from loyalty_tiers.recalc import RecalculationError, recalculate

        try:
            report = asyncio.run(recalculate(args.tenant, args.version, force=args.force))
        except RecalculationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(report)
        return 0
    from loyalty_tiers.app import build_app

    app, _ = build_app()
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

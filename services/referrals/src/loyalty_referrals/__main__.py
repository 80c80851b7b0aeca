"""`python -m loyalty_referrals`: validate programs and secrets, then serve (consumer, relay, timers, API)."""

from __future__ import annotations

import sys

from loyalty_kit.programs import ProgramFileInvalid

from loyalty_referrals.app import build
from loyalty_referrals.program import MissingCodeSecret


def main() -> int:
    try:
        app = build()
    except (ProgramFileInvalid, MissingCodeSecret) as exc:
        print(f"referrals: cannot start: {exc}", file=sys.stderr)
        return 2
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

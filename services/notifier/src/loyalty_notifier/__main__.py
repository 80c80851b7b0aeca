"""`python -m loyalty_notifier`: validate programs and templates, then serve (uvicorn) and consume."""

from __future__ import annotations

import sys

from loyalty_kit.programs import ProgramFileInvalid

from loyalty_notifier.app import build_app


def main() -> None:
    try:
        app = build_app()
    except ProgramFileInvalid as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc
    app.run()


if __name__ == "__main__":
    main()

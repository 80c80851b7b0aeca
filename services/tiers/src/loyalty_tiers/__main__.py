"""``python -m loyalty_tiers``: validate program files, then serve the consumer, timers and read API."""

from __future__ import annotations

from loyalty_tiers.app import build_app


def main() -> None:
    app, _ = build_app()
    app.run()


if __name__ == "__main__":
    main()

"""`python -m loyalty_surveys`: run the surveys service (settings from LOYALTY_* environment variables)."""

from loyalty_surveys.app import build_app


def main() -> None:
    app, _ = build_app()
    app.run()


if __name__ == "__main__":
    main()

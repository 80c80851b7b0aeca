# Real Kafka + Postgres fixtures (kafka_bootstrap, pg_admin_dsn, stack_endpoints) from the suite's stack code.
pytest_plugins = ["loyalty_suite.testing"]

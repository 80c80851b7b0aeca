#!/bin/sh
# First start of the compose Postgres: one login role per service owning a schema of the same name and
# nothing else (the same layout the Helm chart gets from CloudNativePG). Laptop-only password.
set -eu
# LOYALTY_SERVICES only exists so tests can use unique role names on a shared server.
for service in ${LOYALTY_SERVICES:-tiers referrals surveys notifier}; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v role="$service" -v password="$LOYALTY_SERVICE_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN NOINHERIT PASSWORD :'password';
CREATE SCHEMA :"role" AUTHORIZATION :"role";
REVOKE ALL ON SCHEMA :"role" FROM PUBLIC;
ALTER ROLE :"role" SET search_path = :"role";
SQL
done
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c 'REVOKE CREATE ON SCHEMA public FROM PUBLIC'

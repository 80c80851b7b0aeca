-- Headers as two arrays (names, values): written by COPY in binary without a JSON round trip, which cost
-- ~10 us per row. The old JSON column stays readable for rows written before this migration.
ALTER TABLE outbox
    ADD COLUMN header_names  text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN header_values bytea[] NOT NULL DEFAULT '{}',
    ALTER COLUMN headers DROP NOT NULL;

-- Headers as one marshal-encoded bytea (a list of (name, value) pairs): COPY of two arrays cost ~10 us per
-- row in asyncpg's array encoder (two ABC isinstance checks per element), this costs ~1.5 us. Rows written
-- before this migration keep their arrays (or JSON) and stay readable.
ALTER TABLE outbox ADD COLUMN header_blob bytea;

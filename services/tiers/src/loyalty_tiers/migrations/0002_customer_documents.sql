-- One compact document per customer in the status row: the facts (as the domain stores them) and the
-- current ledger entries (revision, points, counts_from, expires_at in epoch microseconds) under the version
-- the status was computed with. A batch then reads one row per customer instead of three tables; the
-- append-only ledger table stays the audit trail (and the explain API's source). The facts table is folded in.
ALTER TABLE customers ADD COLUMN doc jsonb NOT NULL DEFAULT '{"version": 0, "facts": [], "entries": {}}';

UPDATE customers c SET doc = jsonb_build_object(
    'version', c.program_version,
    'facts', coalesce((
        SELECT jsonb_agg(f.body ORDER BY f.occurred_at, f.event_id) FROM facts f
        WHERE f.tenant = c.tenant AND f.customer_id = c.customer_id), '[]'::jsonb),
    'entries', coalesce((
        SELECT jsonb_object_agg(l.entry_id, jsonb_build_array(
            l.revision, l.points,
            (extract(epoch FROM l.counts_from) * 1000000)::bigint,
            (extract(epoch FROM l.expires_at) * 1000000)::bigint))
        FROM (SELECT DISTINCT ON (entry_id) * FROM ledger
              WHERE tenant = c.tenant AND customer_id = c.customer_id AND program_version = c.program_version
              ORDER BY entry_id, revision DESC) l), '{}'::jsonb));

DROP TABLE facts;

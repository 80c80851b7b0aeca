-- The in-order fast path: a customer's status row keeps only what later facts need (the domain's
-- Derivation, the balance changes still ahead, the pending downgrade's start), not every fact and entry.
-- The facts move to an append-only table, read only when a customer needs the full re-derivation (a late or
-- out-of-order event, a refund or revocation, a new program version), by the status API and recalculation.
-- The current entries' revisions are read from the ledger (latest revision per entry) on that same path.
CREATE TABLE facts (
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    event_id    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    body        text NOT NULL,  -- the domain's compact JSON (fact_to_json); text: cheaper to write than jsonb
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id, event_id)
);

INSERT INTO facts (tenant, customer_id, event_id, occurred_at, body)
SELECT c.tenant, c.customer_id, f->>'event_id', (f->>'occurred_at')::timestamptz, f::text
FROM customers c, jsonb_array_elements(c.doc->'facts') AS f
ON CONFLICT DO NOTHING;

-- No derivation in the document: the customer's next event takes the full re-derivation, which writes one.
UPDATE customers SET doc = '{}'::jsonb;
ALTER TABLE customers ALTER COLUMN doc SET DEFAULT '{}'::jsonb;

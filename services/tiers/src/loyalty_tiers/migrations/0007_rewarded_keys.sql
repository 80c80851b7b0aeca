-- What was already rewarded once (orders, reviewed products, survey requests, community activities, referral
-- rewards) moves out of the status document into its own keyed table. In the document these sets grew by one
-- id per rewarded fact for the customer's whole life, and the document is read, parsed, rebuilt and rewritten
-- whole on every event: a customer with 300 earlier orders cost ~4x the CPU per event of a new one (and
-- rewrote ~20 KB of TOASTed text each time). Now a batch reads only the keys its own facts ask about (one
-- primary-key probe each) and inserts the ones it rewards; the document keeps what is small and bounded.
CREATE TABLE rewarded (
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    kind        text NOT NULL,  -- o: order id, r: product (sku), a: survey request, c: community activity, g: referral reward
    key         text NOT NULL,
    event_id    text,           -- the event that booked it (orders and products: named in the duplicate's rule text)
    PRIMARY KEY (tenant, customer_id, kind, key)
);

-- A batch's probes and new keys travel as one array of this type (see 0006).
CREATE TYPE rewarded_row_in AS (customer_id text, kind text, key text, event_id text);

-- Move the sets of documents stored so far (only documents of the customer's current program version are
-- ever continued from; the others are re-derived in full, which rewrites the customer's keys anyway).
INSERT INTO rewarded (tenant, customer_id, kind, key, event_id)
SELECT c.tenant, c.customer_id, 'o', o.key, o.value FROM customers c, jsonb_each_text(c.doc::jsonb -> 'd' -> 'o') o
UNION ALL
SELECT c.tenant, c.customer_id, 'r', r.key, r.value FROM customers c, jsonb_each_text(c.doc::jsonb -> 'd' -> 'r') r
UNION ALL
SELECT c.tenant, c.customer_id, s.kind, s.key, NULL
FROM customers c,
     LATERAL (SELECT 'a' AS kind, jsonb_array_elements_text(c.doc::jsonb -> 'd' -> 'a') AS key
              UNION ALL SELECT 'c', jsonb_array_elements_text(c.doc::jsonb -> 'd' -> 'c')
              UNION ALL SELECT 'g', jsonb_array_elements_text(c.doc::jsonb -> 'd' -> 'g')) s
ON CONFLICT DO NOTHING;

UPDATE customers SET doc = (doc::jsonb #- '{d,o}' #- '{d,r}' #- '{d,a}' #- '{d,c}' #- '{d,g}')::text
WHERE doc::jsonb -> 'd' ?| ARRAY['o', 'r', 'a', 'c', 'g'];

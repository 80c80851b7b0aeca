-- What was already rewarded once (orders, reviewed products, survey requests, community activities, referral
-- rewards) grows by one id per rewarded fact for the customer's whole life. The status document is read,
-- parsed, rebuilt and rewritten whole on every event, so a customer with 300 earlier orders cost ~4x the CPU
-- per event of a new one. Up to store.REWARDED_INLINE keys stay in the document (most customers: no extra
-- I/O); a customer with more "spills" them into this table, and a batch then probes only the keys its own
-- facts ask about (one primary-key probe each). Existing documents keep their sets until their customer's
-- next event, which spills them if they are over the limit.
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

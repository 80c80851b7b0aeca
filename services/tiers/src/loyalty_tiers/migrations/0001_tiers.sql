-- Tiers service schema (search_path = tiers). The kit's inbox/outbox/timers tables live next to these.

-- Every program version a tenant ran, with a content fingerprint: a version's content never changes.
CREATE TABLE program_versions (
    tenant        text NOT NULL,
    version       integer NOT NULL,
    fingerprint   text NOT NULL,
    program       jsonb NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, version)
);

-- Source facts (the consumed events, reduced to what the rules need), kept so that a new program version
-- can re-derive the ledger. One row per source event.
CREATE TABLE facts (
    tenant      text NOT NULL,
    customer_id text NOT NULL,
    event_id    text NOT NULL,
    kind        text NOT NULL,
    occurred_at timestamptz NOT NULL,
    body        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id, event_id)
);

-- Append-only status-points ledger: one entry per source event per program version. A correction (a refund
-- that arrived before its purchase, a late event under a cap) is a new revision, never an UPDATE.
CREATE TABLE ledger (
    tenant          text NOT NULL,
    customer_id     text NOT NULL,
    program_version integer NOT NULL,
    entry_id        text NOT NULL,
    revision        integer NOT NULL,
    activity        text NOT NULL,
    points          integer NOT NULL,
    counts_from     timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    rule            text NOT NULL,
    ref             text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id, program_version, entry_id, revision)
);

-- Current status per customer: the evaluated state plus what was last announced (the domain Snapshot).
CREATE TABLE customers (
    tenant              text NOT NULL,
    customer_id         text NOT NULL,
    program_version     integer NOT NULL,
    tier                text NOT NULL,
    since               timestamptz,
    reason              text NOT NULL,
    points              integer NOT NULL,
    as_of               timestamptz NOT NULL,
    pending_to          text,
    pending_effective_at timestamptz,
    pending_notice_at   timestamptz,
    milestones          text[] NOT NULL DEFAULT '{}',
    notice_for          timestamptz,
    next_check_at       timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id)
);
CREATE INDEX customers_tier ON customers (tenant, tier);

-- Every announced tier change, with its reason (the customer's tier history).
CREATE TABLE tier_history (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL,
    customer_id     text NOT NULL,
    from_tier       text NOT NULL,
    to_tier         text NOT NULL,
    direction       text NOT NULL,
    reason          text NOT NULL,
    effective_at    timestamptz NOT NULL,
    points          integer NOT NULL,
    program_version integer NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tier_history_customer ON tier_history (tenant, customer_id, id);

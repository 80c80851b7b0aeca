-- Kit tables, applied into every service schema (search_path is that schema).
CREATE TABLE inbox (
    id          text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_received_at ON inbox (received_at);

CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    topic      text NOT NULL,
    key        bytea,
    headers    bytea NOT NULL,  -- JSON [[name, latin-1 text of value], ...]; bytea because jsonb rejects NUL
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE timers (
    id         bigserial PRIMARY KEY,
    tenant     text NOT NULL,
    kind       text NOT NULL,
    key        text NOT NULL,
    due_at     timestamptz NOT NULL,
    payload    jsonb NOT NULL DEFAULT '{}',
    attempts   integer NOT NULL DEFAULT 0,
    retry_at   timestamptz,  -- wall-clock backoff after a failed firing
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, key)
);
CREATE INDEX timers_due_at ON timers (due_at);

-- Per-tenant event-time watermark: the latest event time seen for the tenant (timer_clock=event).
CREATE TABLE tenant_clocks (
    tenant    text PRIMARY KEY,
    watermark timestamptz NOT NULL
);

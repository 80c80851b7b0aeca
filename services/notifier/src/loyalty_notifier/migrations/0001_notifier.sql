-- The notifier's own tables (schema "notifier"; the kit adds inbox, outbox, timers, tenant_clocks).

-- Contacts, preferences and the personal context templates use. Consents are last-writer-wins by event
-- time: {"marketing": {"granted": true, "at": "..."}}; channel_consents keys are "category/channel".
CREATE TABLE customers (
    tenant            text        NOT NULL,
    customer_id       text        NOT NULL,
    name              text,
    locale            text,
    time_zone         text,
    contacts          jsonb       NOT NULL DEFAULT '{}',
    consents          jsonb       NOT NULL DEFAULT '{}',
    channel_consents  jsonb       NOT NULL DEFAULT '{}',
    registered_at     timestamptz,
    tier              text,
    last_purchase     jsonb,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id)
);

-- One row per (source event, recipient, channel): the unique key is what makes a message go out at most
-- once across crashes, redeliveries and replays. Rows are planned in the handler's transaction and sent
-- by the sender loop after it committed.
CREATE TABLE deliveries (
    id                bigserial   PRIMARY KEY,
    tenant            text        NOT NULL,
    customer_id       text        NOT NULL,
    notification_id   text        NOT NULL,
    source_event_id   text        NOT NULL,
    source_event_type text        NOT NULL,
    channel           text        NOT NULL,
    recipient         text        NOT NULL,
    endpoint_id       text,
    category          text        NOT NULL,
    template          text        NOT NULL,
    locale            text        NOT NULL,
    time_zone         text        NOT NULL,
    content           jsonb       NOT NULL,
    fallbacks         jsonb       NOT NULL DEFAULT '[]',
    journey_step      text,
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sending', 'delivered', 'failed', 'failed_over', 'suppressed')),
    due_at            timestamptz NOT NULL,
    attempts          integer     NOT NULL DEFAULT 0,
    lease_until       timestamptz,
    last_error        text,
    source_time       timestamptz NOT NULL,
    traceparent       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (tenant, source_event_id, recipient, channel)
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';
CREATE INDEX deliveries_lease ON deliveries (lease_until) WHERE status = 'sending';
CREATE INDEX deliveries_customer ON deliveries (tenant, customer_id, created_at);

-- The delivery log: every attempt with its outcome (partners' webhook log, ops debugging).
CREATE TABLE delivery_attempts (
    id            bigserial   PRIMARY KEY,
    delivery_id   bigint      NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    ok            boolean     NOT NULL,
    failure_kind  text,
    status_code   integer,
    detail        text
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- Every message that was decided against, with its reason.
CREATE TABLE suppressions (
    id                bigserial   PRIMARY KEY,
    tenant            text        NOT NULL,
    customer_id       text        NOT NULL,
    source_event_id   text        NOT NULL,
    source_event_type text        NOT NULL,
    template          text,
    category          text,
    channel           text,
    reason            text        NOT NULL,
    detail            text,
    at                timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, source_event_id, customer_id, reason)
);
CREATE INDEX suppressions_customer ON suppressions (tenant, customer_id);

-- Messages that reached a customer (one per source event), for the contact budget and frequency caps.
CREATE TABLE contact_log (
    tenant          text        NOT NULL,
    customer_id     text        NOT NULL,
    source_event_id text        NOT NULL,
    category        text        NOT NULL,
    sent_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant, customer_id, source_event_id)
);

-- Partner endpoint health: disabled after repeated failures, re-enabled through the API.
CREATE TABLE webhook_endpoints (
    tenant               text        NOT NULL,
    endpoint_id          text        NOT NULL,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    disabled             boolean     NOT NULL DEFAULT false,
    changed_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, endpoint_id)
);

-- Journeys: one instance per (customer, journey), for the journey's whole life.
CREATE TABLE journeys (
    tenant           text        NOT NULL,
    customer_id      text        NOT NULL,
    journey          text        NOT NULL,
    started_at       timestamptz NOT NULL,
    path             text        NOT NULL,
    path_entered_at  timestamptz NOT NULL,
    exited_at        timestamptz,
    exit_reason      text,
    PRIMARY KEY (tenant, customer_id, journey)
);

-- A step is decided at most once per customer for the whole journey, whatever fires its timer again.
CREATE TABLE journey_steps (
    tenant       text        NOT NULL,
    customer_id  text        NOT NULL,
    journey      text        NOT NULL,
    step         text        NOT NULL,
    decided_at   timestamptz NOT NULL,
    outcome      text        NOT NULL,
    PRIMARY KEY (tenant, customer_id, journey, step)
);

-- Surveys service schema (search_path is the service schema; the kit's inbox/outbox/timers live beside it).

-- What the service knows about a customer: first purchase (NPS trigger), tier and locale (segments,
-- messages), the last survey sent (recontact period) and the loyalty-account balance.
CREATE TABLE customers (
    tenant            text NOT NULL,
    customer_id       text NOT NULL,
    first_purchase_at timestamptz,
    tier              text,
    locale            text,
    last_requested_at timestamptz,
    balance           integer NOT NULL DEFAULT 0,
    at_risk           boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, customer_id)
);

-- Orders seen in PurchaseMade, so a DeliveryCompleted survey knows its store, channel and category.
CREATE TABLE orders (
    tenant        text NOT NULL,
    order_id      text NOT NULL,
    customer_id   text NOT NULL,
    store_id      text,
    sales_channel text,
    category      text,
    PRIMARY KEY (tenant, order_id)
);

-- One row per planned survey. status: pending → requested | skipped_recontact; requested → answered |
-- suppressed (the notifier decided against it: contact budget, consent, cap) | undelivered (it failed).
CREATE TABLE survey_requests (
    tenant             text NOT NULL,
    request_id         text NOT NULL,
    customer_id        text NOT NULL,
    survey_id          text NOT NULL,
    kind               text NOT NULL,
    trigger            text NOT NULL,
    trigger_event_id   text NOT NULL,
    due_at             timestamptz NOT NULL,
    status             text NOT NULL,
    requested_at       timestamptz,
    expires_at         timestamptz,
    source_event_id    text,          -- ce_id of the SurveyRequested / FollowUpRequested we emitted
    suppressed_reason  text,
    parent_feedback_id text,          -- set for follow-up requests
    store_id           text,
    sales_channel      text,
    category           text,
    tier               text,
    PRIMARY KEY (tenant, request_id)
);
CREATE INDEX survey_requests_source_event ON survey_requests (source_event_id) WHERE source_event_id IS NOT NULL;
CREATE INDEX survey_requests_tenant_due ON survey_requests (tenant, due_at);

-- Used answer tokens (= answered request ids): the single-use guarantee, shared by HTTP and event answers.
CREATE TABLE used_tokens (
    tenant     text NOT NULL,
    request_id text NOT NULL,
    used_at    timestamptz NOT NULL,
    via        text NOT NULL,
    PRIMARY KEY (tenant, request_id)
);

CREATE TABLE feedback (
    tenant        text NOT NULL,
    feedback_id   text NOT NULL,
    request_id    text NOT NULL,
    customer_id   text NOT NULL,
    survey_id     text NOT NULL,
    kind          text NOT NULL,
    score         integer NOT NULL,
    comment       text,
    themes        text[] NOT NULL DEFAULT '{}',
    sentiment     text,
    answered_at   timestamptz NOT NULL,
    channel       text NOT NULL,
    store_id      text,
    sales_channel text,
    category      text,
    tier          text,
    PRIMARY KEY (tenant, feedback_id),
    UNIQUE (tenant, request_id)
);
CREATE INDEX feedback_tenant_time ON feedback (tenant, answered_at);
CREATE INDEX feedback_customer ON feedback (tenant, customer_id, answered_at);
CREATE INDEX feedback_themes ON feedback USING gin (themes);

-- At most one follow-up per answer.
CREATE TABLE follow_ups (
    tenant       text NOT NULL,
    feedback_id  text NOT NULL,
    request_id   text NOT NULL,
    requested_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, feedback_id)
);

CREATE TABLE cases (
    tenant                    text NOT NULL,
    case_id                   text NOT NULL,
    feedback_id               text NOT NULL,
    customer_id               text NOT NULL,
    queue                     text NOT NULL,
    score                     integer NOT NULL,
    status                    text NOT NULL,   -- open | resolved
    opened_at                 timestamptz NOT NULL,
    deadline_at               timestamptz NOT NULL,
    breached                  boolean NOT NULL DEFAULT false,
    resolved_at               timestamptz,
    resolved_by               text,
    seconds_to_resolve        bigint,
    business_seconds_to_resolve bigint,
    within_deadline           boolean,
    PRIMARY KEY (tenant, case_id)
);
CREATE INDEX cases_open ON cases (tenant, queue, deadline_at) WHERE status = 'open';

-- "You said, we did": exactly one message per (improvement, customer).
CREATE TABLE improvement_notices (
    tenant         text NOT NULL,
    improvement_id text NOT NULL,
    customer_id    text NOT NULL,
    theme          text NOT NULL,
    told_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant, improvement_id, customer_id)
);

-- Loyalty account ledger; customers.balance is its running sum.
CREATE TABLE account_entries (
    tenant      text NOT NULL,
    entry_id    text NOT NULL,     -- derived from the cause, so a replay adds nothing twice
    customer_id text NOT NULL,
    fact        text NOT NULL,
    amount      integer NOT NULL,
    booked_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant, entry_id)
);
CREATE INDEX account_entries_customer ON account_entries (tenant, customer_id, booked_at);

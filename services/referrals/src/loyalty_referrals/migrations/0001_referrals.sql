-- Referrals' own tables (the kit's inbox/outbox/timers live in the same schema).
-- Only keyed hashes of contacts, payment fingerprints and addresses are stored, never the values.

CREATE TABLE customers (
    tenant               text NOT NULL,
    customer_id          text NOT NULL,
    registered_at        timestamptz,
    contact_hashes       text[] NOT NULL DEFAULT '{}',
    email_domain         text,
    payment_fingerprints text[] NOT NULL DEFAULT '{}',
    shipping_addresses   text[] NOT NULL DEFAULT '{}',
    first_order_id       text,
    first_order_at       timestamptz,
    first_order_value    bigint,
    first_order_payment  text,
    first_order_address  text,
    code                 text,
    PRIMARY KEY (tenant, customer_id)
);

-- Which customers carry a contact hash (invitations match on it).
CREATE TABLE customer_contacts (
    tenant       text NOT NULL,
    contact_hash text NOT NULL,
    customer_id  text NOT NULL,
    PRIMARY KEY (tenant, contact_hash, customer_id)
);

-- Generated and vanity codes share one namespace per tenant.
CREATE TABLE codes (
    tenant      text NOT NULL,
    code        text NOT NULL,
    customer_id text NOT NULL,
    vanity      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, code)
);
CREATE UNIQUE INDEX codes_one_generated_per_customer ON codes (tenant, customer_id) WHERE NOT vanity;
CREATE UNIQUE INDEX codes_one_vanity_per_customer ON codes (tenant, customer_id) WHERE vanity;

CREATE TABLE invitations (
    tenant        text NOT NULL,
    invitation_id text NOT NULL,
    referrer_id   text NOT NULL,
    contact_hash  text NOT NULL,
    invited_at    timestamptz NOT NULL,
    channel       text NOT NULL,
    email_domain  text,
    PRIMARY KEY (tenant, invitation_id)
);
CREATE INDEX invitations_by_contact ON invitations (tenant, contact_hash);
CREATE INDEX invitations_by_time ON invitations (tenant, invited_at);

-- Candidate referrers per referee; the winner is decided at the first purchase.
CREATE TABLE claims (
    tenant        text NOT NULL,
    referee_id    text NOT NULL,
    referrer_id   text NOT NULL,
    source        smallint NOT NULL,
    claimed_at    timestamptz NOT NULL,
    invitation_id text NOT NULL DEFAULT '',
    email_domain  text,
    PRIMARY KEY (tenant, referee_id, source, referrer_id, invitation_id)
);

-- One referral per referee (the decided attribution), with both rewards.
CREATE TABLE referrals (
    tenant            text NOT NULL,
    referee_id        text NOT NULL,
    referral_id       text NOT NULL,
    referrer_id       text NOT NULL,
    source            smallint NOT NULL,
    claimed_at        timestamptz NOT NULL,
    order_id          text NOT NULL,
    order_value_minor bigint NOT NULL,
    converted_at      timestamptz NOT NULL,
    status            text NOT NULL,
    reason            text,
    reason_detail     text NOT NULL DEFAULT '',
    hold_until        timestamptz,
    refunded_minor    bigint NOT NULL DEFAULT 0,
    reviewed_by       text,
    rewards           jsonb NOT NULL,
    PRIMARY KEY (tenant, referee_id),
    UNIQUE (tenant, referral_id)
);
CREATE INDEX referrals_by_referrer ON referrals (tenant, referrer_id, converted_at);
CREATE INDEX referrals_by_time ON referrals (tenant, converted_at);
CREATE INDEX referrals_in_review ON referrals (tenant) WHERE status = 'in_review';

-- Every ReferralRejected, including claims that never became a referral (unknown codes).
CREATE TABLE rejections (
    tenant      text NOT NULL,
    event_id    text NOT NULL,
    referee_id  text NOT NULL,
    referrer_id text,
    referral_id text NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    rejected_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, event_id)
);
CREATE INDEX rejections_by_time ON rejections (tenant, rejected_at);

CREATE TABLE feedback (
    tenant      text NOT NULL,
    feedback_id text NOT NULL,
    customer_id text NOT NULL,
    survey_kind text NOT NULL,
    score       smallint NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, feedback_id)
);
CREATE INDEX feedback_by_time ON feedback (tenant, received_at);

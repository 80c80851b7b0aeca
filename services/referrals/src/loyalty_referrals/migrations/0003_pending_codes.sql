-- Codes customers typed before anyone owned them as far as this service has consumed (the owner's
-- registration travels on another partition, or a replay reads partitions at different paces).
-- A row becomes a claim when the code is issued.
CREATE TABLE pending_codes (
    tenant     text NOT NULL,
    code       text NOT NULL,
    referee_id text NOT NULL,
    source     smallint NOT NULL,
    claimed_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, code, referee_id, source)
);
CREATE INDEX pending_codes_by_referee ON pending_codes (tenant, referee_id);

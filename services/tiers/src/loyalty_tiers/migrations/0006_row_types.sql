-- Row types for the per-batch writes: a batch's ledger rows and status rows travel as ONE array of a
-- composite type instead of one array per column. The client encodes each row with the type's codec
-- (asyncpg checks every element of a plain array against collections.abc on the way, ~40 checks per event
-- for these two writes), and the server unnests one array instead of ten or fourteen.
-- Measured on 1000 ledger-shaped rows: client CPU 3.7 -> 2.4 us/row, round trip 5.7 -> 4.0 us/row.
CREATE TYPE ledger_row_in AS (
    customer_id text, revision integer, entry_id text, activity text, points integer,
    counts_from timestamptz, expires_at timestamptz, rule text, ref text, fact text
);

CREATE TYPE customer_row_in AS (
    customer_id text, program_version integer, tier text, since timestamptz, reason text, points integer,
    as_of timestamptz, pending_to text, pending_effective_at timestamptz, pending_notice_at timestamptz,
    milestones text[], notice_for timestamptz, next_check_at timestamptz, doc text
);

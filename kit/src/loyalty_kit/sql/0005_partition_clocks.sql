-- Event-time clock (timer_clock=event) as a low watermark across the consumed partitions.
-- tenant_clocks.watermark stays what timers and rules read; it is now settled from these two tables after each
-- batch (effects.settle_watermarks): while a partition that has seen the tenant still has unread records,
-- the tenant's clock cannot pass the newest event time read from it, so a fast partition can no longer fire
-- a timer ahead of an earlier event still waiting in a slow one.

-- Newest event time applied per tenant and consumed partition.
CREATE TABLE partition_clocks (
    tenant    text NOT NULL,
    topic     text NOT NULL,
    partition integer NOT NULL,
    newest    timestamptz NOT NULL,
    PRIMARY KEY (tenant, topic, partition)
);

-- Per consumed partition: did it still have records after the last applied batch (the consumer's
-- high watermark was past the batch's last offset)?
CREATE TABLE partition_progress (
    topic     text NOT NULL,
    partition integer NOT NULL,
    behind    boolean NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Existing clocks carry over as they are (they never go back); partitions fill in with the next batches.

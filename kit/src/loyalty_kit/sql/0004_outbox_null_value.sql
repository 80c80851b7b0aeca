-- Dead letters go through the outbox (exactly once per consumed record), and a dead-lettered record may
-- have no value (a Kafka tombstone on an input topic): the relay publishes such a row with a null value.
ALTER TABLE outbox ALTER COLUMN value DROP NOT NULL;

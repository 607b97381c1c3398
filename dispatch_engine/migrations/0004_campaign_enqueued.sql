-- Outbox marker: a campaign whose emails are committed but not (yet) all in Redis has
-- enqueued_at NULL. The sweeper finishes what a process that died in between left undone.
ALTER TABLE campaigns ADD COLUMN enqueued_at timestamptz;
UPDATE campaigns SET enqueued_at = now();
CREATE INDEX campaigns_not_enqueued ON campaigns (updated_at) WHERE enqueued_at IS NULL;

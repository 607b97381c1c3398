-- Limits people set in practice: a daily cap beside the hourly one (senders and campaigns),
-- and a random extra delay between emails; and why a waiting email waits, until when.
ALTER TABLE senders ADD COLUMN daily_limit integer CHECK (daily_limit > 0);
ALTER TABLE senders ADD COLUMN delay_jitter_ms integer NOT NULL DEFAULT 0
    CHECK (delay_jitter_ms >= 0);
ALTER TABLE campaigns ADD COLUMN daily_limit integer CHECK (daily_limit > 0);
ALTER TABLE campaigns ADD COLUMN delay_jitter_ms integer NOT NULL DEFAULT 0
    CHECK (delay_jitter_ms >= 0);
-- Written when pacing holds an email back (a WaitReason value); read only while it waits.
ALTER TABLE dispatches ADD COLUMN wait_reason text;
ALTER TABLE dispatches ADD COLUMN wait_until timestamptz;

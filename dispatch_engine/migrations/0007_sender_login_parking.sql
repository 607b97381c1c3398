-- A sender whose server keeps refusing its login is parked (all its emails wait) until its
-- settings change or a user resumes it; login_failures counts refusals across workers.
ALTER TABLE senders ADD COLUMN login_failures integer NOT NULL DEFAULT 0;
ALTER TABLE senders ADD COLUMN parked_reason text;
ALTER TABLE senders ADD COLUMN parked_at timestamptz;

-- Senders are archived, not deleted: past campaigns and dispatches keep pointing at them.
ALTER TABLE senders ADD COLUMN archived_at timestamptz;
ALTER TABLE senders ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE senders DROP CONSTRAINT senders_owner_id_from_address_key;
CREATE UNIQUE INDEX senders_owner_address ON senders (owner_id, lower(from_address))
    WHERE archived_at IS NULL;
DROP INDEX senders_one_default;
CREATE UNIQUE INDEX senders_one_default ON senders (owner_id) WHERE is_default AND archived_at IS NULL;
-- Deleting a sender checks for queued emails of that sender.
CREATE INDEX dispatches_sender_queued ON dispatches (sender_id)
    WHERE status IN ('scheduled', 'sending', 'rate_limited');

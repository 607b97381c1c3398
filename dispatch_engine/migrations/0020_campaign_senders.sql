-- Mailbox pools (docs/pools.md): a campaign may name several senders. `campaigns.sender_id`
-- stays the pool's first sender (what a campaign of one sender always was); every sender of
-- a pool, the first too, has a row here. `left_at` / `left_reason` / `moved`: the sender
-- left the campaign's rotation (parked for refused logins, or its bounce or complaint rate
-- passed its threshold) and `moved` of its queued recipients went to the others.
CREATE TABLE campaign_senders (
    campaign_id  bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    sender_id    bigint NOT NULL REFERENCES senders (id),
    position     smallint NOT NULL CHECK (position BETWEEN 0 AND 49),
    assigned     integer NOT NULL DEFAULT 0 CHECK (assigned >= 0),
    left_at      timestamptz,
    left_reason  text,
    moved        integer NOT NULL DEFAULT 0 CHECK (moved >= 0),
    PRIMARY KEY (campaign_id, sender_id),
    UNIQUE (campaign_id, position)
);
-- "Which pools does this sender serve": what leaving the rotation looks up.
CREATE INDEX campaign_senders_sender ON campaign_senders (sender_id) WHERE left_at IS NULL;

-- A pool holds its owner's senders only: one set-based check per statement.
CREATE FUNCTION campaign_senders_check_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM new_members m
        JOIN campaigns c ON c.id = m.campaign_id
        JOIN senders s ON s.id = m.sender_id
        WHERE s.owner_id <> c.owner_id
    ) THEN
        RAISE EXCEPTION 'a pool may hold only its campaign owner''s senders'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER campaign_senders_check_owner AFTER INSERT ON campaign_senders
    REFERENCING NEW TABLE AS new_members
    FOR EACH STATEMENT EXECUTE FUNCTION campaign_senders_check_owner();

-- Migration 0005's check, with the pool: a dispatch's sender is its campaign's, or one of its
-- campaign's pool. Still one set-based statement over the distinct (campaign, owner, sender)
-- of the COPY (a pool of 50 makes 50 tuples of 100,000 rows), not one query per row.
CREATE OR REPLACE FUNCTION dispatches_check_campaign() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- As a foreign key does: the campaigns cannot be deleted before this transaction ends.
    PERFORM 1 FROM campaigns
        WHERE id IN (SELECT DISTINCT campaign_id FROM new_dispatches) FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT campaign_id, owner_id, sender_id FROM new_dispatches) d
        WHERE NOT EXISTS (
            SELECT 1 FROM campaigns c
            WHERE c.id = d.campaign_id AND c.owner_id = d.owner_id
              AND (c.sender_id = d.sender_id OR EXISTS (
                  SELECT 1 FROM campaign_senders p
                  WHERE p.campaign_id = c.id AND p.sender_id = d.sender_id))
        )
    ) THEN
        RAISE EXCEPTION 'a dispatch must belong to an existing campaign, with its owner and a sender of its pool'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

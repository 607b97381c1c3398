-- Scheduling writes a campaign's dispatches in one COPY. Their three foreign keys (campaign,
-- owner, sender) were checked row by row, three queries and row locks per dispatch: about
-- 5 of the 6.4 seconds of a 100,000-recipient POST (docs/performance.md, "Scheduling and
-- listing at scale"). One set-based check per statement replaces them. It is stricter than
-- before: a dispatch's owner and sender must be its campaign's, as the app always writes them.
-- Not guarded any more: an UPDATE of those three columns (the app never makes one).
ALTER TABLE dispatches
    DROP CONSTRAINT dispatches_campaign_id_fkey,
    DROP CONSTRAINT dispatches_owner_id_fkey,
    DROP CONSTRAINT dispatches_sender_id_fkey;

CREATE FUNCTION dispatches_check_campaign() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- As a foreign key does: the campaigns cannot be deleted before this transaction ends.
    PERFORM 1 FROM campaigns
        WHERE id IN (SELECT DISTINCT campaign_id FROM new_dispatches) FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT campaign_id, owner_id, sender_id FROM new_dispatches) d
        WHERE NOT EXISTS (
            SELECT 1 FROM campaigns c
            WHERE c.id = d.campaign_id AND c.owner_id = d.owner_id AND c.sender_id = d.sender_id
        )
    ) THEN
        RAISE EXCEPTION 'a dispatch must belong to an existing campaign, with its owner and sender'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER dispatches_check_campaign AFTER INSERT ON dispatches
    REFERENCING NEW TABLE AS new_dispatches
    FOR EACH STATEMENT EXECUTE FUNCTION dispatches_check_campaign();

-- ON DELETE CASCADE as before: a deleted campaign takes its dispatches along, and so does a
-- deleted user (campaigns.owner_id cascades, then this).
CREATE FUNCTION campaigns_delete_dispatches() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dispatches WHERE campaign_id IN (SELECT id FROM old_campaigns);
    RETURN NULL;
END $$;

CREATE TRIGGER campaigns_delete_dispatches AFTER DELETE ON campaigns
    REFERENCING OLD TABLE AS old_campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_delete_dispatches();

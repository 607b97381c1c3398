-- Sequences: a campaign's follow-up steps, each recipient's place in them, and the link from
-- a follow-up's dispatch to the recipient's first one (docs/sequences.md).

-- Step 0 is the campaign's own subject and body; these are steps 1..10. A wait counts days of
-- `day_seconds` (DISPATCH_DAY_SECONDS when the campaign was scheduled: 86,400 but in tests).
CREATE TABLE campaign_steps (
    campaign_id    bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    step           smallint NOT NULL CHECK (step BETWEEN 1 AND 10),
    wait_days      smallint NOT NULL CHECK (wait_days BETWEEN 1 AND 365),
    business_days  boolean NOT NULL DEFAULT false,         -- count Mon-Fri only
    day_seconds    integer NOT NULL CHECK (day_seconds > 0),
    subject        text,                                   -- NULL: "Re: " + the first subject
    body_text      text NOT NULL,
    body_html      text,
    PRIMARY KEY (campaign_id, step)
);

-- NULL: not part of a sequence (a campaign without steps), so the trigger below never runs
-- for those. first_id: a follow-up's step-0 dispatch (its Message-ID threads the follow-up).
ALTER TABLE dispatches
    ADD COLUMN step smallint,
    ADD COLUMN first_id bigint;

-- One row per recipient of a campaign with steps, written by the schedule's COPY.
-- active: the dispatch of `step` is queued or being sent; waiting: `step` was sent, step + 1
-- is made at next_due_at; finished: the last step was sent; replied / stopped: no more steps.
-- No foreign key: checked per statement, as dispatches are (migration 0005); a row-by-row
-- check doubled the time of a 100,000-recipient schedule with steps.
CREATE TABLE sequence_members (
    campaign_id        bigint NOT NULL,
    first_dispatch_id  bigint NOT NULL,
    recipient          text NOT NULL,
    step               smallint NOT NULL DEFAULT 0,
    dispatch_id        bigint NOT NULL,                    -- the dispatch of `step`
    state              text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'waiting', 'replied', 'finished', 'stopped')),
    stop_reason        text CHECK (stop_reason IN ('replied', 'unsubscribed', 'bounced',
        'complained', 'suppressed', 'manual', 'failed', 'cancelled')),
    next_due_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, first_dispatch_id)
);
-- Partial: a schedule's COPY writes `active` rows, so neither index costs it anything.
CREATE INDEX sequence_members_due ON sequence_members (next_due_at) WHERE state = 'waiting';
CREATE INDEX sequence_members_waiting ON sequence_members (campaign_id) WHERE state = 'waiting';

CREATE FUNCTION sequence_members_check_campaign() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM campaigns
        WHERE id IN (SELECT DISTINCT campaign_id FROM new_members) FOR KEY SHARE;
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT campaign_id FROM new_members) m
        WHERE NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = m.campaign_id)
    ) THEN
        RAISE EXCEPTION 'a sequence member must belong to an existing campaign'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER sequence_members_check_campaign AFTER INSERT ON sequence_members
    REFERENCING NEW TABLE AS new_members
    FOR EACH STATEMENT EXECUTE FUNCTION sequence_members_check_campaign();

-- ON DELETE CASCADE, per statement: a deleted campaign (or user) takes its members along.
CREATE FUNCTION campaigns_delete_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sequence_members WHERE campaign_id IN (SELECT id FROM old_campaigns);
    RETURN NULL;
END $$;

CREATE TRIGGER campaigns_delete_members AFTER DELETE ON campaigns
    REFERENCING OLD TABLE AS old_campaigns
    FOR EACH STATEMENT EXECUTE FUNCTION campaigns_delete_members();

-- When the next step is due: `days` days of `day_seconds` after `sent`, counting only
-- Mon-Fri when `business`. Day n since the epoch is a weekday of (n + 3) mod 7 (Mon = 0):
-- 1970-01-01 was a Thursday; with 86,400-second days these are UTC's own weekdays.
CREATE FUNCTION sequence_due(sent timestamptz, days integer, business boolean,
                             day_seconds integer) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    today bigint := floor(extract(epoch FROM sent) / day_seconds);
    todo integer := days;
    k integer := 0;
BEGIN
    IF NOT business THEN
        RETURN sent + make_interval(secs => days::float8 * day_seconds);
    END IF;
    WHILE todo > 0 LOOP
        k := k + 1;
        IF (today + k + 3) % 7 < 5 THEN
            todo := todo - 1;
        END IF;
    END LOOP;
    RETURN sent + make_interval(secs => k::float8 * day_seconds);
END $$;

-- A step's dispatch moved on: its member follows in the same transaction, whichever process
-- recorded it (the worker's group commit, a feedback report, a cancel).
CREATE FUNCTION sequence_follow_dispatch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    m sequence_members%ROWTYPE;
    nxt campaign_steps%ROWTYPE;
BEGIN
    SELECT * INTO m FROM sequence_members
        WHERE campaign_id = NEW.campaign_id AND first_dispatch_id = coalesce(NEW.first_id, NEW.id)
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'sent' THEN
        IF m.state <> 'active' OR m.dispatch_id <> NEW.id THEN
            RETURN NULL;
        END IF;
        SELECT * INTO nxt FROM campaign_steps
            WHERE campaign_id = NEW.campaign_id AND step = m.step + 1;
        IF NOT FOUND THEN
            UPDATE sequence_members SET state = 'finished', next_due_at = NULL, updated_at = now()
                WHERE campaign_id = m.campaign_id AND first_dispatch_id = m.first_dispatch_id;
        ELSE
            UPDATE sequence_members SET state = 'waiting', updated_at = now(),
                   next_due_at = sequence_due(coalesce(NEW.sent_at, now()), nxt.wait_days,
                                              nxt.business_days, nxt.day_seconds)
                WHERE campaign_id = m.campaign_id AND first_dispatch_id = m.first_dispatch_id;
        END IF;
    ELSIF NEW.status = 'scheduled' THEN  -- a failed step sent again (retry-failed)
        IF m.state = 'stopped' AND m.stop_reason = 'failed' AND m.dispatch_id = NEW.id THEN
            UPDATE sequence_members SET state = 'active', stop_reason = NULL, updated_at = now()
                WHERE campaign_id = m.campaign_id AND first_dispatch_id = m.first_dispatch_id;
        END IF;
    ELSIF m.state IN ('active', 'waiting') THEN
        -- failed, cancelled, suppressed: the end of the current step only; bounced,
        -- complained: a report on any step sent so far.
        IF NEW.status IN ('failed', 'cancelled', 'suppressed') AND m.dispatch_id <> NEW.id THEN
            RETURN NULL;
        END IF;
        UPDATE sequence_members SET state = 'stopped', next_due_at = NULL, updated_at = now(),
               stop_reason = CASE NEW.status WHEN 'complained' THEN 'complained'
                                 WHEN 'bounced' THEN 'bounced' ELSE NEW.status END
            WHERE campaign_id = m.campaign_id AND first_dispatch_id = m.first_dispatch_id;
        -- A later step already queued goes too (the worker drops a cancelled id it claims).
        UPDATE dispatches SET status = 'cancelled', finished_at = now(), updated_at = now()
            WHERE id = m.dispatch_id AND id <> NEW.id AND status IN ('scheduled', 'rate_limited');
    END IF;
    RETURN NULL;
END $$;

-- The WHEN is checked without entering plpgsql: dispatches of campaigns without steps
-- (step IS NULL) and the moves to `sending` or to a retry never pay for it.
CREATE TRIGGER sequence_follow_dispatch AFTER UPDATE OF status ON dispatches
    FOR EACH ROW
    WHEN (NEW.step IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
          AND (NEW.status IN ('sent', 'failed', 'cancelled', 'suppressed', 'bounced', 'complained')
               OR OLD.status = 'failed'))
    EXECUTE FUNCTION sequence_follow_dispatch();

-- Consent and feedback: suppressions per owner, the feedback that arrived (bounces,
-- complaints, unsubscribes), and the dispatch statuses they lead to.

-- suppressed: never sent, its address was suppressed before its send (checked per batch).
-- bounced / complained: sent, then a bounce or a complaint came back for it.
ALTER TABLE dispatches DROP CONSTRAINT dispatches_status_check;
ALTER TABLE dispatches ADD CONSTRAINT dispatches_status_check
    CHECK (status IN ('scheduled', 'sending', 'sent', 'failed', 'rate_limited', 'cancelled',
                      'suppressed', 'bounced', 'complained'));
-- The Sent list shows every finished email but the cancelled ones, as before.
DROP INDEX dispatches_owner_finished;
CREATE INDEX dispatches_owner_finished ON dispatches (owner_id, finished_at DESC, id DESC)
    WHERE status IN ('sent', 'failed', 'suppressed', 'bounced', 'complained');

-- One row per suppressed address of an owner. `email_normalized` is
-- consent.addresses.normalize_address: lower case, the domain in IDNA ASCII form.
CREATE TABLE suppressions (
    id                bigserial PRIMARY KEY,
    owner_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email_normalized  text NOT NULL,
    reason            text NOT NULL CHECK (reason IN ('unsubscribed', 'hard_bounce', 'complaint',
                                                      'manual', 'soft_bounce_limit')),
    source            text NOT NULL,            -- one_click, imap, smtp, ses, api, csv, …
    detail            text NOT NULL DEFAULT '',
    dispatch_id       bigint,                   -- the email that led to it, when one did
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, email_normalized)
);
-- The API's keyset order (newest first).
CREATE INDEX suppressions_owner_list ON suppressions (owner_id, id DESC);

-- Every report read (DSN, ARF, provider event, one-click unsubscribe), once: a report read
-- twice has the same fingerprint and changes nothing.
CREATE TABLE feedback_events (
    id                bigserial PRIMARY KEY,
    fingerprint       text NOT NULL UNIQUE,
    owner_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    dispatch_id       bigint,
    campaign_id       bigint,
    sender_id         bigint,
    kind              text NOT NULL CHECK (kind IN ('hard_bounce', 'soft_bounce', 'complaint',
                                                    'unsubscribe', 'reply', 'auto_reply')),
    source            text NOT NULL,
    email_normalized  text NOT NULL,
    detail            text NOT NULL DEFAULT '',
    occurred_at       timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now()
);
-- Soft bounces of an address within a period; counts per campaign and sender.
CREATE INDEX feedback_events_address ON feedback_events (owner_id, email_normalized, kind, occurred_at);
CREATE INDEX feedback_events_campaign ON feedback_events (campaign_id, kind);
CREATE INDEX feedback_events_sender ON feedback_events (sender_id, kind);

-- A transactional sender may leave out the unsubscribe footer (never the headers).
ALTER TABLE senders ADD COLUMN transactional boolean NOT NULL DEFAULT false;
-- Why a campaign paused itself (bounce or complaint rate over its threshold); NULL: by a user.
ALTER TABLE campaigns ADD COLUMN paused_reason text;

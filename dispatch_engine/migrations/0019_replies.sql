-- Reply detection (docs/replies.md). A sender may name its own IMAP inbox, where the replies
-- to its emails land: `reply_mailbox` holds host, port, tls, username, folder and the
-- password sealed like transport passwords (secretbox.py: "sealed:v1:…"); NULL: not read.
ALTER TABLE senders ADD COLUMN reply_mailbox jsonb
    CHECK (reply_mailbox IS NULL OR NOT reply_mailbox ? 'password'
           OR reply_mailbox ->> 'password' LIKE 'sealed:%');

-- Where the reader got to in each sender's mailbox. It never flags a person's own mail, so
-- the last UID read is kept here, under the folder's UIDVALIDITY; `mailbox` is a digest of
-- host, port, user and folder: a changed mailbox starts again.
CREATE TABLE reply_mailbox_cursors (
    sender_id    bigint PRIMARY KEY REFERENCES senders (id) ON DELETE CASCADE,
    mailbox      text NOT NULL,
    uidvalidity  bigint NOT NULL,
    last_uid     bigint NOT NULL,
    read_at      timestamptz NOT NULL DEFAULT now(),
    last_error   text
);

-- Each reply and auto-reply matched to one of our emails, as the campaign page lists it.
-- `fingerprint` is its feedback event's (recorded first, in feedback_events).
CREATE TABLE replies (
    id            bigserial PRIMARY KEY,
    fingerprint   text NOT NULL UNIQUE REFERENCES feedback_events (fingerprint) ON DELETE CASCADE,
    owner_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    campaign_id   bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    dispatch_id   bigint NOT NULL,
    sender_id     bigint NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('reply', 'auto_reply')),
    matched_by    text NOT NULL CHECK (matched_by IN ('thread', 'subject')),
    from_address  text NOT NULL,
    subject       text NOT NULL DEFAULT '',
    snippet       text NOT NULL DEFAULT '',
    received_at   timestamptz NOT NULL,
    returns_on    date,                     -- an out-of-office's return date, when it gave one
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- A campaign's replies, newest first (the API's keyset order).
CREATE INDEX replies_campaign ON replies (campaign_id, kind, id DESC);

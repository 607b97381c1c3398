-- Dispatch Engine: the initial schema. Never edit a landed migration; add the next number.

CREATE TABLE users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    name        text NOT NULL DEFAULT '',
    avatar_url  text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per external login (provider + its subject id) pointing at a user.
CREATE TABLE identities (
    provider    text NOT NULL,
    subject     text NOT NULL,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, subject)
);

CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,  -- SHA-256 of the token; the token itself is never stored
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE TABLE senders (
    id                  bigserial PRIMARY KEY,
    owner_id            bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    from_address        text NOT NULL,
    display_name        text NOT NULL DEFAULT '',
    reply_to            text,
    transport           text NOT NULL,
    transport_settings  jsonb NOT NULL DEFAULT '{}'::jsonb,
    hourly_limit        integer NOT NULL CHECK (hourly_limit > 0),
    min_gap_ms          integer NOT NULL DEFAULT 0 CHECK (min_gap_ms >= 0),
    is_default          boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, from_address)
);
CREATE UNIQUE INDEX senders_one_default ON senders (owner_id) WHERE is_default;

CREATE TABLE campaigns (
    id                bigserial PRIMARY KEY,
    owner_id          bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sender_id         bigint NOT NULL REFERENCES senders (id),
    subject           text NOT NULL,
    body_text         text NOT NULL,
    body_html         text,
    start_at          timestamptz NOT NULL,
    delay_between_ms  integer NOT NULL DEFAULT 0 CHECK (delay_between_ms >= 0),
    hourly_limit      integer CHECK (hourly_limit > 0),
    status            text NOT NULL DEFAULT 'scheduled'
                      CHECK (status IN ('scheduled', 'running', 'paused', 'cancelled', 'completed')),
    total             integer NOT NULL DEFAULT 0,
    idempotency_key   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, idempotency_key)
);
CREATE INDEX campaigns_owner_list ON campaigns (owner_id, id DESC);

CREATE TABLE dispatches (
    id               bigserial PRIMARY KEY,
    campaign_id      bigint NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    owner_id         bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sender_id        bigint NOT NULL REFERENCES senders (id),
    recipient        text NOT NULL,
    vars             jsonb NOT NULL DEFAULT '{}'::jsonb,
    scheduled_at     timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'scheduled'
                     CHECK (status IN ('scheduled', 'sending', 'sent', 'failed',
                                       'rate_limited', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    idempotency_key  bytea NOT NULL UNIQUE,  -- SHA-256(campaign id, recipient, scheduled time)
    message_id       text,
    sent_at          timestamptz,
    finished_at      timestamptz,             -- when it became sent, failed or cancelled
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- The Scheduled list (keyset on scheduled_at, id) and the Sent list (keyset on finished_at, id).
CREATE INDEX dispatches_owner_queued ON dispatches (owner_id, scheduled_at, id)
    WHERE status IN ('scheduled', 'sending', 'rate_limited');
CREATE INDEX dispatches_owner_finished ON dispatches (owner_id, finished_at DESC, id DESC)
    WHERE status IN ('sent', 'failed');
CREATE INDEX dispatches_campaign_status ON dispatches (campaign_id, status);
-- Recovery walks every queued dispatch in id order.
CREATE INDEX dispatches_queued ON dispatches (id)
    WHERE status IN ('scheduled', 'sending', 'rate_limited');

-- One row per email handed to a transport: what makes a retry or a duplicate job harmless.
CREATE TABLE ledger (
    idempotency_key  bytea PRIMARY KEY,
    dispatch_id      bigint NOT NULL REFERENCES dispatches (id) ON DELETE CASCADE,
    state            text NOT NULL CHECK (state IN ('sending', 'sent')),
    attempt_token    text NOT NULL,
    transport        text NOT NULL,
    message_id       text NOT NULL,
    response         text,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_dispatch ON ledger (dispatch_id);

-- What the capture transport received: the local inbox.
CREATE TABLE captured_messages (
    id           bigserial PRIMARY KEY,
    owner_id     bigint REFERENCES users (id) ON DELETE CASCADE,
    dispatch_id  bigint REFERENCES dispatches (id) ON DELETE SET NULL,
    message_id   text NOT NULL,
    mail_from    text NOT NULL,
    recipients   text[] NOT NULL,
    subject      text NOT NULL DEFAULT '',
    raw          bytea NOT NULL,
    deliveries   integer NOT NULL DEFAULT 1,  -- > 1: the same Message-ID arrived again
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX captured_messages_owner ON captured_messages (owner_id, id DESC);
-- A receiver may drop a resend by its Message-ID; the local inbox does.
CREATE UNIQUE INDEX captured_messages_message_id ON captured_messages (message_id);

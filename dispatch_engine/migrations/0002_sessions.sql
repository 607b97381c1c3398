-- Dashboard sessions: the cookie carries a random token; only its SHA-256 is stored here,
-- so a database leak gives no working cookie. Logout sets revoked_at (server-side revocation).

CREATE TABLE sessions (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    bytea NOT NULL UNIQUE,
    provider      text NOT NULL,             -- the login provider that started it
    user_agent    text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at IS NULL;

-- Look-ups of a user's identities (the primary key serves provider + subject).
CREATE INDEX identities_user ON identities (user_id);

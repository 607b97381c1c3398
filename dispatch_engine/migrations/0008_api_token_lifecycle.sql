-- API tokens that can be listed, expired and revoked (issue 13). The token itself is still
-- never stored: `prefix` keeps its first characters so a list can tell tokens apart.
-- `created_by` is the token that made this one through the API: revoking a leaked token
-- revokes what it made too, so a leak cannot outlive its revocation.

ALTER TABLE api_tokens
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN prefix     text NOT NULL DEFAULT '',
    ADD COLUMN created_by bigint REFERENCES api_tokens (id) ON DELETE SET NULL;

CREATE INDEX api_tokens_user ON api_tokens (user_id, id);
CREATE INDEX api_tokens_created_by ON api_tokens (created_by) WHERE created_by IS NOT NULL;

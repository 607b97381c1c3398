"""Users, API tokens, login identities and browser sessions."""

from __future__ import annotations

import secrets

from ..models import (
    User,
)
from .base import Queries, hash_token, user_from


class AccountQueries(Queries):
    async def ensure_user(self, email: str, name: str = "") -> User:
        row = await self.pool.fetchrow(
            """INSERT INTO users (email, name) VALUES ($1, $2)
               ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email
               RETURNING id, email, name, avatar_url""",
            email.lower(),
            name,
        )
        assert row is not None
        return user_from(row)

    async def create_token(self, user_id: int, name: str) -> str:
        token = "de_" + secrets.token_urlsafe(32)
        await self.pool.execute(
            "INSERT INTO api_tokens (user_id, name, token_hash) VALUES ($1, $2, $3)",
            user_id,
            name,
            hash_token(token),
        )
        return token

    async def user_for_token(self, token: str) -> User | None:
        row = await self.pool.fetchrow(
            """UPDATE api_tokens SET last_used_at = now()
               FROM users WHERE users.id = api_tokens.user_id
                 AND token_hash = $1 AND revoked_at IS NULL
               RETURNING users.id, users.email, users.name, users.avatar_url""",
            hash_token(token),
        )
        return user_from(row) if row else None

    async def login_identity(
        self,
        provider: str,
        subject: str,
        email: str,
        *,
        email_verified: bool,
        name: str,
        avatar_url: str | None,
    ) -> User | None:
        """The user of an external identity, linked or created; refreshes name and avatar.

        A new identity joins an existing user with the same email only when the provider
        verified that email; otherwise None (the email belongs to someone else).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            user_id = await conn.fetchval(
                "SELECT user_id FROM identities WHERE provider = $1 AND subject = $2",
                provider,
                subject,
            )
            if user_id is None:
                row = await conn.fetchrow(
                    """INSERT INTO users (email, name, avatar_url) VALUES ($1, $2, $3)
                       ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email
                       RETURNING id, (xmax = 0) AS created""",
                    email.lower(),
                    name,
                    avatar_url,
                )
                assert row is not None
                if not row["created"] and not email_verified:
                    return None
                user_id = row["id"]
                await conn.execute(
                    """INSERT INTO identities (provider, subject, user_id) VALUES ($1, $2, $3)
                       ON CONFLICT (provider, subject) DO NOTHING""",
                    provider,
                    subject,
                    user_id,
                )
            row = await conn.fetchrow(
                """UPDATE users SET name = COALESCE(NULLIF($2, ''), name),
                                    avatar_url = COALESCE($3, avatar_url)
                   WHERE id = $1 RETURNING id, email, name, avatar_url""",
                user_id,
                name,
                avatar_url,
            )
        return user_from(row) if row else None

    async def create_session(
        self, user_id: int, token_hash: bytes, *, provider: str, user_agent: str, ttl_s: int
    ) -> None:
        await self.pool.execute(
            """INSERT INTO sessions (user_id, token_hash, provider, user_agent, expires_at)
               VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))""",
            user_id,
            token_hash,
            provider,
            user_agent[:300],
            ttl_s,
        )

    async def session_user(self, token_hash: bytes) -> User | None:
        """The user of a live session (not revoked, not expired); notes it was seen."""
        row = await self.pool.fetchrow(
            """WITH s AS (
                   SELECT id, user_id, last_seen_at FROM sessions
                   WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
               ), seen AS (
                   UPDATE sessions SET last_seen_at = now() FROM s
                   WHERE sessions.id = s.id AND s.last_seen_at < now() - interval '5 minutes'
               )
               SELECT u.id, u.email, u.name, u.avatar_url
               FROM s JOIN users u ON u.id = s.user_id""",
            token_hash,
        )
        return user_from(row) if row else None

    async def revoke_session(self, token_hash: bytes) -> bool:
        done = await self.pool.fetchval(
            """UPDATE sessions SET revoked_at = now()
               WHERE token_hash = $1 AND revoked_at IS NULL RETURNING true""",
            token_hash,
        )
        return bool(done)

    async def prune_sessions(self, keep_days: int = 7) -> int:
        """Delete sessions that expired or were revoked more than `keep_days` ago."""
        result = await self.pool.execute(
            """DELETE FROM sessions
               WHERE expires_at < now() - make_interval(days => $1)
                  OR revoked_at < now() - make_interval(days => $1)""",
            keep_days,
        )
        return int(result.split()[-1])

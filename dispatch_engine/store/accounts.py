"""Users, API tokens, login identities and browser sessions."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ..models import (
    User,
)
from .base import Queries, hash_token, user_from

TOKEN_PREFIX = "de_"
SHOWN_CHARS = 11  # "de_" + 8 random characters: enough to tell tokens apart, useless to use


@dataclass(frozen=True)
class ApiToken:
    """What may be shown about a token: never its secret."""

    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    email: str = ""

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewToken:
    token: str  # the secret, shown to its owner once
    info: ApiToken


def _token_from(row: asyncpg.Record) -> ApiToken:
    return ApiToken(
        row["id"],
        row["name"],
        row["prefix"],
        row["created_at"],
        row["last_used_at"],
        row["expires_at"],
        row["revoked_at"],
        row.get("email") or "",
    )


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

    async def user_id_by_email(self, email: str) -> int | None:
        found = await self.pool.fetchval("SELECT id FROM users WHERE email = $1", email.lower())
        return int(found) if found is not None else None

    async def create_token(self, user_id: int, name: str) -> str:
        """A new token that never expires; returns its secret."""
        made = await self.issue_token(user_id, name)
        assert made is not None  # no limit asked for
        return made.token

    async def issue_token(
        self,
        user_id: int,
        name: str,
        *,
        expires_in_s: int | None = None,
        created_by: int | None = None,
        max_live: int | None = None,
    ) -> NewToken | None:
        """A new token; its secret is returned here once and only its SHA-256 is kept.

        A token made by another token (`created_by`) expires no later than its maker. With
        `max_live`, None when the user already has that many live tokens (checked under a
        lock on the user's row, so concurrent requests cannot both pass).
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn, conn.transaction():
            if max_live is not None:
                await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
                live = await conn.fetchval(
                    """SELECT count(*) FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL
                         AND (expires_at IS NULL OR expires_at > now())""",
                    user_id,
                )
                if live >= max_live:
                    return None
            row = await conn.fetchrow(
                """INSERT INTO api_tokens
                       (user_id, name, token_hash, prefix, expires_at, created_by)
                   SELECT $1, $2, $3, $4,
                          LEAST(now() + make_interval(secs => $5), parent.expires_at), $6
                   FROM (SELECT (SELECT expires_at FROM api_tokens WHERE id = $6) AS expires_at)
                        AS parent
                   RETURNING id, name, prefix, created_at, last_used_at, expires_at,
                             revoked_at""",
                user_id,
                name,
                hash_token(token),
                token[:SHOWN_CHARS],
                expires_in_s,
                created_by,
            )
        assert row is not None
        return NewToken(token=token, info=_token_from(row))

    async def user_for_token(self, token: str) -> User | None:
        found = await self.token_user(token)
        return found[0] if found else None

    async def token_user(self, token: str) -> tuple[User, int] | None:
        """The user of a live token (not revoked, not expired) and the token's id.

        No cache: every request asks PostgreSQL, so a revocation holds at once in every
        process. `last_used_at` is written at most once a minute per token (no write per call).
        """
        row = await self.pool.fetchrow(
            """WITH t AS (
                   SELECT id, user_id, last_used_at FROM api_tokens
                   WHERE token_hash = $1 AND revoked_at IS NULL
                     AND (expires_at IS NULL OR expires_at > now())
               ), used AS (
                   UPDATE api_tokens SET last_used_at = now() FROM t
                   WHERE api_tokens.id = t.id
                     AND (t.last_used_at IS NULL OR t.last_used_at < now() - interval '1 minute')
               )
               SELECT t.id AS token_id, u.id, u.email, u.name, u.avatar_url
               FROM t JOIN users u ON u.id = t.user_id""",
            hash_token(token),
        )
        return (user_from(row), int(row["token_id"])) if row else None

    async def tokens_of(self, user_id: int | None, limit: int = 200) -> list[ApiToken]:
        """Newest first: one user's tokens, or everyone's (`None`, for the operator's CLI)."""
        rows = await self.pool.fetch(
            """SELECT t.id, t.name, t.prefix, t.created_at, t.last_used_at, t.expires_at,
                      t.revoked_at, u.email
               FROM api_tokens t JOIN users u ON u.id = t.user_id
               WHERE $1::bigint IS NULL OR t.user_id = $1
               ORDER BY t.id DESC LIMIT $2""",
            user_id,
            limit,
        )
        return [_token_from(row) for row in rows]

    async def revoke_token(self, token_id: int, user_id: int | None) -> list[int] | None:
        """Revoke a token and every token made with it; None when there is no such token.

        Scoped to `user_id` (None only for the operator's CLI). Returns the ids revoked now
        (empty when it already was).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT 1 FROM api_tokens WHERE id = $1 AND ($2::bigint IS NULL OR user_id = $2)",
                token_id,
                user_id,
            )
            if not exists:
                return None
            rows = await conn.fetch(
                """WITH RECURSIVE tree AS (
                       SELECT id FROM api_tokens WHERE id = $1
                       UNION
                       SELECT t.id FROM api_tokens t JOIN tree ON t.created_by = tree.id
                   )
                   UPDATE api_tokens SET revoked_at = now() FROM tree
                   WHERE api_tokens.id = tree.id AND api_tokens.revoked_at IS NULL
                   RETURNING api_tokens.id""",
                token_id,
            )
        return sorted(int(r["id"]) for r in rows)

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

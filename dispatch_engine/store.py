"""Every SQL query of Dispatch Engine, grouped by what it serves.

Each state change of a dispatch is one statement guarded by the states it may come from,
so two processes can never both win.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .db import Conn
from .models import (
    CampaignContent,
    CampaignStatus,
    DispatchJob,
    DispatchStatus,
    Sender,
    User,
)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _user(row: asyncpg.Record) -> User:
    return User(row["id"], row["email"], row["name"], row["avatar_url"])


def _sender(row: asyncpg.Record) -> Sender:
    return Sender(
        row["id"],
        row["owner_id"],
        row["from_address"],
        row["display_name"],
        row["reply_to"],
        row["transport"],
        row["transport_settings"],
        row["hourly_limit"],
        row["min_gap_ms"],
        row["is_default"],
    )


@dataclass(frozen=True)
class NewDispatch:
    id: int
    recipient: str
    vars: dict[str, Any]
    scheduled_at: datetime
    idempotency_key: bytes


@dataclass(frozen=True)
class SendOutcome:
    """What the worker learned about one dispatch, recorded in one group commit."""

    dispatch_id: int
    idempotency_key: bytes
    status: DispatchStatus  # sent, failed, scheduled (retry)
    campaign_id: int
    recipient: str
    message_id: str = ""
    response: str = ""
    error: str | None = None
    retry_at: datetime | None = None


class Store:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # ---- users, tokens, senders ----

    async def ensure_user(self, email: str, name: str = "") -> User:
        row = await self.pool.fetchrow(
            """INSERT INTO users (email, name) VALUES ($1, $2)
               ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email
               RETURNING id, email, name, avatar_url""",
            email.lower(),
            name,
        )
        assert row is not None
        return _user(row)

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
        return _user(row) if row else None

    # ---- senders (archived ones stay for history but are not offered) ----

    async def ensure_default_sender(
        self, user: User, *, transport: str, hourly_limit: int
    ) -> Sender:
        row = await self.pool.fetchrow(
            "SELECT * FROM senders WHERE owner_id = $1 AND is_default AND archived_at IS NULL",
            user.id,
        )
        if row is None:
            row = await self.pool.fetchrow(
                """INSERT INTO senders (owner_id, from_address, display_name, transport,
                                        hourly_limit, is_default)
                   VALUES ($1, $2, $3, $4, $5, true)
                   ON CONFLICT (owner_id, lower(from_address)) WHERE archived_at IS NULL
                   DO UPDATE SET is_default = true
                   RETURNING *""",
                user.id,
                user.email,
                user.name,
                transport,
                hourly_limit,
            )
        assert row is not None
        return _sender(row)

    async def find_sender(self, owner_id: int, ref: str | int) -> Sender | None:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            row = await self.pool.fetchrow(
                "SELECT * FROM senders WHERE owner_id = $1 AND id = $2 AND archived_at IS NULL",
                owner_id,
                int(ref),
            )
        else:
            row = await self.pool.fetchrow(
                """SELECT * FROM senders WHERE owner_id = $1
                     AND lower(from_address) = lower($2) AND archived_at IS NULL""",
                owner_id,
                ref,
            )
        return _sender(row) if row else None

    async def senders_of(self, owner_id: int) -> list[Sender]:
        rows = await self.pool.fetch(
            """SELECT * FROM senders WHERE owner_id = $1 AND archived_at IS NULL
               ORDER BY is_default DESC, id""",
            owner_id,
        )
        return [_sender(r) for r in rows]

    async def save_sender(
        self, owner_id: int, sender_id: int | None, fields: dict[str, Any]
    ) -> Sender:
        """Insert (sender_id None) or update a sender; `is_default` moves the flag atomically."""
        columns = ["from_address", "display_name", "reply_to", "transport",
                   "transport_settings", "hourly_limit", "min_gap_ms"]  # fmt: skip
        values = {c: fields[c] for c in columns if c in fields}
        async with self.pool.acquire() as conn, conn.transaction():
            if fields.get("is_default"):
                await conn.execute(
                    "UPDATE senders SET is_default = false WHERE owner_id = $1 AND is_default",
                    owner_id,
                )
                values["is_default"] = True
            if sender_id is None:
                names = ", ".join(["owner_id", *values])
                marks = ", ".join(f"${n}" for n in range(1, len(values) + 2))
                row = await conn.fetchrow(
                    f"INSERT INTO senders ({names}) VALUES ({marks}) RETURNING *",
                    owner_id,
                    *values.values(),
                )
            else:
                sets = ", ".join(f"{c} = ${n}" for n, c in enumerate(values, start=3))
                row = await conn.fetchrow(
                    f"""UPDATE senders SET {sets or "from_address = from_address"},
                               updated_at = now()
                        WHERE owner_id = $1 AND id = $2 AND archived_at IS NULL RETURNING *""",
                    owner_id,
                    sender_id,
                    *values.values(),
                )
            if row is None:
                raise LookupError(sender_id)
            return _sender(row)

    async def queued_of_sender(self, sender_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, sender_id FROM dispatches
               WHERE sender_id = $1 AND status IN ('scheduled', 'sending', 'rate_limited')""",
            sender_id,
        )

    async def archive_sender(self, owner_id: int, sender_id: int) -> bool:
        """Archive a sender; the oldest remaining one becomes the default if it was."""
        async with self.pool.acquire() as conn, conn.transaction():
            was_default = await conn.fetchval(
                """UPDATE senders SET archived_at = now(), is_default = false
                   WHERE owner_id = $1 AND id = $2 AND archived_at IS NULL
                   RETURNING (SELECT is_default FROM senders WHERE id = $2)""",
                owner_id,
                sender_id,
            )
            if was_default is None:
                return False
            if was_default:
                await conn.execute(
                    """UPDATE senders SET is_default = true WHERE id = (
                           SELECT id FROM senders WHERE owner_id = $1 AND archived_at IS NULL
                           ORDER BY id LIMIT 1)""",
                    owner_id,
                )
            return True

    async def cancel_sender_queued(self, sender_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """UPDATE dispatches SET status = 'cancelled', finished_at = now(),
                      last_error = 'sender deleted', updated_at = now()
               WHERE sender_id = $1 AND status IN ('scheduled', 'rate_limited')
               RETURNING id, sender_id""",
            sender_id,
        )

    async def sealed_transport_settings(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT id, transport_settings FROM senders WHERE transport_settings ? 'password'"
        )

    async def set_transport_settings(self, sender_id: int, settings: dict[str, Any]) -> None:
        await self.pool.execute(
            "UPDATE senders SET transport_settings = $2, updated_at = now() WHERE id = $1",
            sender_id,
            settings,
        )

    async def status_counts(self, owner_id: int) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM dispatches WHERE owner_id = $1 GROUP BY status",
            owner_id,
        )
        counts = {s.value: 0 for s in DispatchStatus}
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    async def senders_by_id(self, ids: Sequence[int]) -> dict[int, Sender]:
        rows = await self.pool.fetch("SELECT * FROM senders WHERE id = ANY($1::bigint[])", ids)
        return {r["id"]: _sender(r) for r in rows}

    # ---- campaigns ----

    async def campaign_by_idempotency_key(self, owner_id: int, key: str) -> int | None:
        value = await self.pool.fetchval(
            "SELECT id FROM campaigns WHERE owner_id = $1 AND idempotency_key = $2", owner_id, key
        )
        return int(value) if value is not None else None

    async def reserve_dispatch_ids(self, count: int) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT nextval('dispatches_id_seq') AS id FROM generate_series(1, $1)", count
        )
        return [r["id"] for r in rows]

    async def create_campaign(
        self,
        conn: Conn,
        *,
        owner_id: int,
        sender_id: int,
        subject: str,
        body_text: str,
        body_html: str | None,
        start_at: datetime,
        delay_between_ms: int,
        hourly_limit: int | None,
        total: int,
        idempotency_key: str | None,
    ) -> int:
        """Insert the campaign row (inside the caller's transaction); None when the key exists."""
        value = await conn.fetchval(
            """INSERT INTO campaigns (owner_id, sender_id, subject, body_text, body_html,
                   start_at, delay_between_ms, hourly_limit, total, idempotency_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id""",
            owner_id,
            sender_id,
            subject,
            body_text,
            body_html,
            start_at,
            delay_between_ms,
            hourly_limit,
            total,
            idempotency_key,
        )
        return int(value)

    async def copy_dispatches(
        self,
        conn: Conn,
        *,
        campaign_id: int,
        owner_id: int,
        sender_id: int,
        rows: Sequence[NewDispatch],
    ) -> None:
        await conn.copy_records_to_table(
            "dispatches",
            columns=[
                "id",
                "campaign_id",
                "owner_id",
                "sender_id",
                "recipient",
                "vars",
                "scheduled_at",
                "idempotency_key",
            ],
            records=[
                (
                    d.id,
                    campaign_id,
                    owner_id,
                    sender_id,
                    d.recipient,
                    d.vars,
                    d.scheduled_at,
                    d.idempotency_key,
                )
                for d in rows
            ],
        )

    async def campaign_detail(self, owner_id: int, campaign_id: int) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT c.*, s.from_address FROM campaigns c JOIN senders s ON s.id = c.sender_id
               WHERE c.owner_id = $1 AND c.id = $2""",
            owner_id,
            campaign_id,
        )
        if row is None:
            return None
        counts = {s.value: 0 for s in DispatchStatus}
        for r in await self.pool.fetch(
            "SELECT status, count(*) AS n FROM dispatches WHERE campaign_id = $1 GROUP BY status",
            campaign_id,
        ):
            counts[r["status"]] = r["n"]
        detail = dict(row)
        detail["counts"] = counts
        return detail

    async def campaign_contents(self, ids: Sequence[int]) -> dict[int, CampaignContent]:
        rows = await self.pool.fetch(
            """SELECT id, owner_id, sender_id, subject, body_text, body_html, delay_between_ms,
                      hourly_limit FROM campaigns WHERE id = ANY($1::bigint[])""",
            ids,
        )
        return {r["id"]: CampaignContent(**dict(r)) for r in rows}

    # ---- listings (keyset pagination) ----

    async def list_scheduled(
        self, owner_id: int, limit: int, after: tuple[datetime, int] | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT d.id, d.recipient, c.subject, d.scheduled_at, d.status, d.campaign_id,
                      d.last_error, d.attempts
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               WHERE d.owner_id = $1 AND d.status IN ('scheduled', 'sending', 'rate_limited')
                 AND ($3::timestamptz IS NULL OR (d.scheduled_at, d.id) > ($3, $4))
               ORDER BY d.scheduled_at, d.id LIMIT $2""",
            owner_id,
            limit,
            after[0] if after else None,
            after[1] if after else 0,
        )

    async def list_finished(
        self, owner_id: int, limit: int, before: tuple[datetime, int] | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT d.id, d.recipient, c.subject, d.scheduled_at, d.sent_at, d.finished_at,
                      d.status, d.campaign_id, d.last_error, d.message_id, d.attempts,
                      l.response
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               LEFT JOIN ledger l ON l.idempotency_key = d.idempotency_key
               WHERE d.owner_id = $1 AND d.status IN ('sent', 'failed')
                 AND ($3::timestamptz IS NULL OR (d.finished_at, d.id) < ($3, $4))
               ORDER BY d.finished_at DESC, d.id DESC LIMIT $2""",
            owner_id,
            limit,
            before[0] if before else None,
            before[1] if before else 0,
        )

    async def list_inbox(
        self, owner_id: int, limit: int, before_id: int | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, dispatch_id, message_id, mail_from, recipients, subject, received_at,
                      deliveries
               FROM captured_messages
               WHERE owner_id = $1 AND ($3::bigint IS NULL OR id < $3)
               ORDER BY id DESC LIMIT $2""",
            owner_id,
            limit,
            before_id,
        )

    async def inbox_message(self, owner_id: int, message_id: int) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            "SELECT * FROM captured_messages WHERE owner_id = $1 AND id = $2",
            owner_id,
            message_id,
        )

    # ---- dashboard: identities, sessions, campaign list, live events ----

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
        return _user(row) if row else None

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
        return _user(row) if row else None

    async def revoke_session(self, token_hash: bytes) -> bool:
        done = await self.pool.fetchval(
            """UPDATE sessions SET revoked_at = now()
               WHERE token_hash = $1 AND revoked_at IS NULL RETURNING true""",
            token_hash,
        )
        return bool(done)

    async def dashboard_campaigns(
        self, owner_id: int, limit: int, before_id: int | None
    ) -> list[asyncpg.Record]:
        """A page of campaigns, newest first, each with its counts by status (keyset on id)."""
        return await self.pool.fetch(
            """SELECT c.id, c.subject, c.status, c.total, c.start_at, c.created_at,
                      s.from_address, k.counts
               FROM campaigns c JOIN senders s ON s.id = c.sender_id
               LEFT JOIN LATERAL (
                   SELECT jsonb_object_agg(status, n) AS counts FROM (
                       SELECT status, count(*) AS n FROM dispatches d
                       WHERE d.campaign_id = c.id GROUP BY status
                   ) by_status
               ) k ON true
               WHERE c.owner_id = $1 AND ($3::bigint IS NULL OR c.id < $3)
               ORDER BY c.id DESC LIMIT $2""",
            owner_id,
            limit,
            before_id,
        )

    async def dispatch_owners(
        self, ids: Sequence[int], owner_ids: Sequence[int]
    ) -> list[asyncpg.Record]:
        """(owner_id, campaign_id, ids) of the given dispatches, only for the given owners."""
        return await self.pool.fetch(
            """SELECT owner_id, campaign_id, array_agg(id ORDER BY id) AS ids FROM dispatches
               WHERE id = ANY($1::bigint[]) AND owner_id = ANY($2::bigint[])
               GROUP BY owner_id, campaign_id""",
            ids,
            owner_ids,
        )

    # ---- the worker's path ----

    async def load_jobs(self, ids: Sequence[int]) -> list[DispatchJob]:
        rows = await self.pool.fetch(
            """SELECT d.id, d.campaign_id, d.sender_id, d.owner_id, d.recipient, d.vars,
                      d.status, c.status AS campaign_status, d.idempotency_key, d.attempts,
                      d.scheduled_at
               FROM dispatches d JOIN campaigns c ON c.id = d.campaign_id
               WHERE d.id = ANY($1::bigint[])""",
            ids,
        )
        return [
            DispatchJob(
                r["id"],
                r["campaign_id"],
                r["sender_id"],
                r["owner_id"],
                r["recipient"],
                r["vars"],
                DispatchStatus(r["status"]),
                CampaignStatus(r["campaign_status"]),
                r["idempotency_key"],
                r["attempts"],
                r["scheduled_at"],
            )
            for r in rows
        ]

    async def begin_sends(
        self,
        ids: Sequence[int],
        message_ids: Sequence[str],
        transports: Sequence[str],
        attempt_token: str,
    ) -> tuple[set[int], set[int]]:
        """Mark dispatches `sending` and write their ledger rows, in one statement.

        Returns (go, already_sent): ids to hand to the transport now, and ids whose ledger
        says a previous attempt was recorded as sent (they are only repaired and acked).
        A ledger row still `sending` belongs to an attempt that died; this one takes it over.
        """
        rows = await self.pool.fetch(
            """WITH input AS (
                   SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(id, mid, tr)
               ), marked AS (
                   UPDATE dispatches d SET status = 'sending', attempts = d.attempts + 1,
                          updated_at = now()
                   FROM input WHERE d.id = input.id
                     AND d.status IN ('scheduled', 'rate_limited', 'sending')
                   RETURNING d.id, d.idempotency_key, input.mid, input.tr
               ), led AS (
                   INSERT INTO ledger (idempotency_key, dispatch_id, state, attempt_token,
                                       transport, message_id)
                   SELECT idempotency_key, id, 'sending', $4, tr, mid FROM marked
                   ON CONFLICT (idempotency_key) DO UPDATE
                       SET attempt_token = EXCLUDED.attempt_token, at = now()
                       WHERE ledger.state = 'sending'
                   RETURNING dispatch_id
               )
               SELECT m.id, (l.dispatch_id IS NOT NULL) AS go
               FROM marked m LEFT JOIN led l ON l.dispatch_id = m.id""",
            ids,
            message_ids,
            transports,
            attempt_token,
        )
        go = {r["id"] for r in rows if r["go"]}
        return go, {r["id"] for r in rows if not r["go"]}

    async def record_outcomes(self, outcomes: Sequence[SendOutcome]) -> None:
        """Group commit: one statement (so one atomic transaction) records a whole batch.

        Sent: ledger and dispatch both `sent`. Failed: the reason. Retry: back to
        `scheduled` at its new time. Each guarded by `status = 'sending'`.
        """
        await self.pool.execute(
            """WITH input AS (
                   SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[],
                                        $5::text[], $6::text[], $7::timestamptz[])
                       AS t(id, k, status, mid, response, error, retry_at)
               ), led AS (
                   UPDATE ledger SET state = 'sent', response = input.response, at = now()
                   FROM input WHERE input.status = 'sent' AND ledger.idempotency_key = input.k
               )
               UPDATE dispatches d SET
                   status = input.status,
                   message_id = CASE WHEN input.status = 'sent' THEN input.mid
                                     ELSE d.message_id END,
                   sent_at = CASE WHEN input.status = 'sent' THEN now() ELSE d.sent_at END,
                   finished_at = CASE WHEN input.status = 'scheduled' THEN NULL ELSE now() END,
                   last_error = CASE WHEN input.status = 'sent' THEN NULL ELSE input.error END,
                   scheduled_at = COALESCE(input.retry_at, d.scheduled_at),
                   updated_at = now()
               FROM input WHERE d.id = input.id AND d.status = 'sending'""",
            [o.dispatch_id for o in outcomes],
            [o.idempotency_key for o in outcomes],
            [o.status.value for o in outcomes],
            [o.message_id for o in outcomes],
            [o.response[:1000] for o in outcomes],
            [o.error or "" for o in outcomes],
            [o.retry_at if o.status == DispatchStatus.SCHEDULED else None for o in outcomes],
        )

    async def repair_sent(self, ids: Sequence[int]) -> None:
        """A ledger row says sent but the dispatch does not (a crash between the two)."""
        await self.pool.execute(
            """UPDATE dispatches d SET status = 'sent', message_id = l.message_id,
                      sent_at = l.at, finished_at = l.at, updated_at = now()
               FROM ledger l WHERE l.dispatch_id = d.id AND d.id = ANY($1::bigint[])
                 AND l.state = 'sent' AND d.status <> 'sent'""",
            ids,
        )

    async def mark_rate_limited(self, ids: Sequence[int]) -> None:
        await self.pool.execute(
            """UPDATE dispatches SET status = 'rate_limited', updated_at = now()
               WHERE id = ANY($1::bigint[]) AND status = 'scheduled'""",
            ids,
        )

    async def fail_dispatches(self, ids: Sequence[int], reason: str) -> None:
        await self.pool.execute(
            """UPDATE dispatches SET status = 'failed', last_error = $2, finished_at = now(),
                      updated_at = now()
               WHERE id = ANY($1::bigint[])
                 AND status IN ('scheduled', 'sending', 'rate_limited')""",
            ids,
            reason,
        )

    async def update_campaign_progress(self, campaign_ids: Sequence[int]) -> list[tuple[int, int]]:
        """Mark campaigns running or completed; returns (id, owner) of those just completed.

        The status guard makes the flip to completed happen once, whichever process wins.
        """
        rows = await self.pool.fetch(
            """UPDATE campaigns c SET status = CASE
                   WHEN NOT EXISTS (SELECT 1 FROM dispatches d WHERE d.campaign_id = c.id
                                    AND d.status IN ('scheduled', 'sending', 'rate_limited'))
                   THEN 'completed' ELSE 'running' END,
                   updated_at = now()
               WHERE c.id = ANY($1::bigint[]) AND c.status IN ('scheduled', 'running')
               RETURNING c.id, c.owner_id, c.status""",
            campaign_ids,
        )
        return [(r["id"], r["owner_id"]) for r in rows if r["status"] == "completed"]

    # ---- campaign controls (each a guarded state change) ----

    async def list_campaigns(
        self, owner_id: int, limit: int, before_id: int | None
    ) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT c.id, c.subject, c.status, c.total, c.start_at, c.created_at,
                      c.sender_id, s.from_address
               FROM campaigns c JOIN senders s ON s.id = c.sender_id
               WHERE c.owner_id = $1 AND ($3::bigint IS NULL OR c.id < $3)
               ORDER BY c.id DESC LIMIT $2""",
            owner_id,
            limit,
            before_id,
        )

    async def set_campaign_status(
        self, owner_id: int, campaign_id: int, to: CampaignStatus, allowed_from: Sequence[str]
    ) -> bool:
        done = await self.pool.fetchval(
            """UPDATE campaigns SET status = $3, updated_at = now()
               WHERE owner_id = $1 AND id = $2 AND status = ANY($4::text[]) RETURNING true""",
            owner_id,
            campaign_id,
            to.value,
            list(allowed_from),
        )
        return bool(done)

    async def cancel_dispatches(self, campaign_id: int) -> list[asyncpg.Record]:
        """Cancel what has not started; emails already handed to a transport finish."""
        return await self.pool.fetch(
            """UPDATE dispatches SET status = 'cancelled', finished_at = now(),
                      updated_at = now()
               WHERE campaign_id = $1 AND status IN ('scheduled', 'rate_limited')
               RETURNING id, sender_id""",
            campaign_id,
        )

    async def mark_enqueued(self, campaign_id: int, enqueued: bool) -> None:
        """The outbox marker: NULL while a campaign's emails may be missing from Redis."""
        await self.pool.execute(
            "UPDATE campaigns SET enqueued_at = CASE WHEN $2 THEN now() END WHERE id = $1",
            campaign_id,
            enqueued,
        )

    async def campaigns_not_enqueued(self, older_than_s: float) -> list[int]:
        rows = await self.pool.fetch(
            """SELECT id FROM campaigns WHERE enqueued_at IS NULL
                 AND status IN ('scheduled', 'running')
                 AND updated_at < now() - make_interval(secs => $1)""",
            older_than_s,
        )
        return [r["id"] for r in rows]

    async def reset_failed(self, campaign_id: int) -> int:
        result = await self.pool.execute(
            """UPDATE dispatches SET status = 'scheduled', attempts = 0, finished_at = NULL,
                      scheduled_at = now(), updated_at = now()
               WHERE campaign_id = $1 AND status = 'failed'""",
            campaign_id,
        )
        return int(result.split()[-1])

    # ---- recovery ----

    async def queued_after(
        self, after_id: int, limit: int, campaign_id: int | None = None
    ) -> list[asyncpg.Record]:
        """Queued dispatches of live campaigns in id order, for re-adding to Redis in batches."""
        return await self.pool.fetch(
            """SELECT d.id, d.sender_id, d.scheduled_at, c.delay_between_ms, s.min_gap_ms,
                      s.hourly_limit AS sender_limit, c.hourly_limit AS campaign_limit
               FROM dispatches d
               JOIN campaigns c ON c.id = d.campaign_id
               JOIN senders s ON s.id = d.sender_id
               WHERE d.status IN ('scheduled', 'sending', 'rate_limited') AND d.id > $1
                 AND c.status IN ('scheduled', 'running')
                 AND ($3::bigint IS NULL OR d.campaign_id = $3)
               ORDER BY d.id LIMIT $2""",
            after_id,
            limit,
            campaign_id,
        )

    async def queued_of_campaign(self, campaign_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, sender_id FROM dispatches
               WHERE campaign_id = $1 AND status IN ('scheduled', 'rate_limited')""",
            campaign_id,
        )

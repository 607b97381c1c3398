"""Senders: sending identities; archived ones stay for history but are not offered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ..models import (
    Sender,
    User,
)
from .base import Queries, sender_from


class SenderQueries(Queries):
    async def ensure_default_sender(
        self, user: User, *, transport: str, hourly_limit: int
    ) -> Sender:
        """The user's default sender, made on first use (their own address)."""
        for _ in range(3):
            row = await self.pool.fetchrow(
                "SELECT * FROM senders WHERE owner_id = $1 AND is_default AND archived_at IS NULL",
                user.id,
            )
            if row is not None:
                return sender_from(row)
            try:
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
            except asyncpg.UniqueViolationError:
                continue  # a concurrent request made the default first (one per owner): read it
            if row is not None:
                return sender_from(row)
        raise RuntimeError(f"could not make a default sender for user {user.id}")

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
        return sender_from(row) if row else None

    async def senders_of(self, owner_id: int) -> list[Sender]:
        rows = await self.pool.fetch(
            """SELECT * FROM senders WHERE owner_id = $1 AND archived_at IS NULL
               ORDER BY is_default DESC, id""",
            owner_id,
        )
        return [sender_from(r) for r in rows]

    async def save_sender(
        self, owner_id: int, sender_id: int | None, fields: dict[str, Any]
    ) -> Sender:
        """Insert (sender_id None) or update a sender; `is_default` moves the flag atomically."""
        columns = ["from_address", "display_name", "reply_to", "transport",
                   "transport_settings", "hourly_limit", "min_gap_ms", "daily_limit",
                   "delay_jitter_ms"]  # fmt: skip
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
            return sender_from(row)

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

    async def senders_by_id(self, ids: Sequence[int]) -> dict[int, Sender]:
        rows = await self.pool.fetch("SELECT * FROM senders WHERE id = ANY($1::bigint[])", ids)
        return {r["id"]: sender_from(r) for r in rows}

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

# How a queued email of a parked sender says why it waits.
WAITING = "waiting for the sender's account to be fixed: "


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
                   "delay_jitter_ms", "transactional", "warmup_start", "warmup_step",
                   "warmup_max", "warmup_started_at", "reply_mailbox"]  # fmt: skip
        values = {c: fields[c] for c in columns if c in fields}
        unpark = (
            ", login_failures = 0, parked_reason = NULL, parked_at = NULL"
            if fields.get("unpark")
            else ""
        )
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
                               updated_at = now(){unpark}
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

    # ---- login health (dispatch_engine/sender_health.py) ----

    async def count_login_failure(
        self, sender_id: int, settings: dict[str, Any], reason: str, park_at: int
    ) -> tuple[int, bool] | None:
        """Count a refused login of these settings; park the sender at `park_at` failures.

        Returns (failures, parked by this call), or None when the sender is already parked or
        its settings changed since (the refusal was of an old password: not counted).
        """
        row = await self.pool.fetchrow(
            """UPDATE senders SET login_failures = login_failures + 1,
                      parked_reason = CASE WHEN login_failures + 1 >= $3 THEN $4 END,
                      parked_at = CASE WHEN login_failures + 1 >= $3 THEN now() END
               WHERE id = $1 AND transport_settings = $2 AND parked_reason IS NULL
               RETURNING login_failures, parked_reason IS NOT NULL AS parked""",
            sender_id,
            settings,
            park_at,
            reason,
        )
        return (row["login_failures"], row["parked"]) if row else None

    async def parked_reason(self, sender_id: int) -> str | None:
        reason: str | None = await self.pool.fetchval(
            "SELECT parked_reason FROM senders WHERE id = $1", sender_id
        )
        return reason

    async def reset_login_failures(self, sender_id: int) -> None:
        await self.pool.execute(
            """UPDATE senders SET login_failures = 0
               WHERE id = $1 AND login_failures > 0 AND parked_reason IS NULL""",
            sender_id,
        )

    async def unpark_sender(self, owner_id: int, sender_id: int) -> bool:
        """Clear a sender's parking (a user resumed it); false when it was not parked."""
        row = await self.pool.fetchrow(
            """UPDATE senders SET login_failures = 0, parked_reason = NULL, parked_at = NULL,
                      updated_at = now()
               WHERE owner_id = $1 AND id = $2 AND parked_reason IS NOT NULL
               RETURNING id""",
            owner_id,
            sender_id,
        )
        return row is not None

    async def refund_attempt(self, dispatch_id: int) -> None:
        """A send that never reached the account (its login was refused) is not an attempt."""
        await self.pool.execute(
            """UPDATE dispatches SET attempts = greatest(attempts - 1, 0)
               WHERE id = $1 AND status = 'sending'""",
            dispatch_id,
        )

    async def mark_sender_waiting(self, sender_id: int, reason: str | None) -> None:
        """Say on each queued email of a parked sender why it waits (None: no longer)."""
        if reason is None:
            await self.pool.execute(
                """UPDATE dispatches SET last_error = NULL, wait_reason = NULL, updated_at = now()
                   WHERE sender_id = $1 AND status IN ('scheduled', 'rate_limited')
                     AND last_error LIKE $2 || '%'""",
                sender_id,
                WAITING,
            )
            return
        await self.pool.execute(
            """UPDATE dispatches SET last_error = $2, wait_reason = 'auth_failure',
                      wait_until = NULL, updated_at = now()
               WHERE sender_id = $1 AND status IN ('scheduled', 'rate_limited')""",
            sender_id,
            f"{WAITING}{reason}",
        )

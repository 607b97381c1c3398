"""What the feedback policy's counts cost on a big campaign (docs/bounce-policy.md "Cost").

    nice .venv/bin/python bench/feedback_rates.py [--emails 1000000] [--repeat 7]

A private PostgreSQL (dispatch_engine.embedded), migrated; one campaign of --emails
dispatches (90 % finished: sent, 4 % bounced, 0.1 % complained; the rest scheduled), then
VACUUM (ANALYZE). Times `Store.campaign_rates` (the auto-pause's count) and
`Store.sender_feedback` (a sender's 30 days in /api/stats): median and min of --repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from dispatch_engine.embedded import EmbeddedServers
from dispatch_engine.migrate import migrate
from dispatch_engine.store import Store


async def fill(url: str, emails: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await conn.execute("INSERT INTO users (email, name) VALUES ('a@example.com', 'A')")
        await conn.execute(
            """INSERT INTO senders (owner_id, from_address, display_name, transport,
                                    transport_settings, hourly_limit, min_gap_ms)
               VALUES (1, 'news@example.com', '', 'capture', '{}', 100, 0)"""
        )
        await conn.execute(
            """INSERT INTO campaigns (owner_id, sender_id, subject, body_text, start_at,
                                      delay_between_ms, total, status)
               VALUES (1, 1, 's', 'b', now(), 0, $1, 'running')""",
            emails,
        )
        await conn.execute(
            """INSERT INTO dispatches (id, campaign_id, owner_id, sender_id, recipient, vars,
                                       scheduled_at, idempotency_key, status, finished_at)
               SELECT g, 1, 1, 1, 'r' || g || '@example.com', '{}', now(),
                      sha256(g::text::bytea),
                      CASE WHEN g > $1 * 0.9 THEN 'scheduled' WHEN g % 1000 = 0 THEN 'complained'
                           WHEN g % 25 = 0 THEN 'bounced' ELSE 'sent' END,
                      CASE WHEN g > $1 * 0.9 THEN NULL ELSE now() END
               FROM generate_series(1, $1::int) g""",
            emails,
        )
        await conn.execute("VACUUM (ANALYZE) dispatches")
    finally:
        await conn.close()


async def timed(label: str, call: Callable[[], Awaitable[Any]], repeat: int) -> None:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await call()
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"{label}: median {times[len(times) // 2] * 1000:.0f} ms, "
          f"min {times[0] * 1000:.0f} ms ({answer})")  # fmt: skip


async def main(url: str, emails: int, repeat: int) -> None:
    await fill(url, emails)
    pool = await asyncpg.create_pool(url)
    store = Store(pool)
    since = datetime.now(UTC) - timedelta(days=30)
    try:
        await timed("campaign_rates", lambda: store.campaign_rates(1), repeat)
        await timed("campaign_head", lambda: store.campaign_head(1), repeat)
        await timed("sender_feedback (30 days)", lambda: store.sender_feedback(1, since), repeat)
    finally:
        await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with EmbeddedServers(Path(tempfile.mkdtemp(prefix="feedback-rates-"))) as servers:
        asyncio.run(main(servers.urls.database_url, args.emails, args.repeat))

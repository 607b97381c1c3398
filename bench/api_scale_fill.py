"""Part 2 of bench/api_scale.py, the fill: dispatches brought to --total rows in the shape
the app leaves them (campaigns of assorted sizes, sent / failed / cancelled, ledger rows),
half of them the measured dev user's, then VACUUM (ANALYZE)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

DEV_EMAIL = "dev@example.com"
DOMAINS = [
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "example.com",
    "example.org",
    *(f"mail{j}.example.net" for j in range(300)),
]

USERS_SQL = """
INSERT INTO users (email, name)
SELECT 'user' || g || '@bench.example.com', 'Bench user ' || g FROM generate_series(1, $1) g
ON CONFLICT (email) DO NOTHING"""

SENDERS_SQL = """
INSERT INTO senders (owner_id, from_address, transport, hourly_limit, is_default)
SELECT u.id, 'news@' || split_part(u.email, '@', 1) || '.example.com', 'smtp', 100000, true
FROM users u WHERE NOT EXISTS (SELECT 1 FROM senders s WHERE s.owner_id = u.id)"""

CAMPAIGNS_SQL = """
INSERT INTO campaigns (owner_id, sender_id, subject, body_text, start_at, delay_between_ms,
                       status, total, created_at, updated_at, enqueued_at)
SELECT s.owner_id, s.id, 'Newsletter ' || t.n || ' for {{ email }}', 'Hello {{ email }}',
       t.at, 250, 'completed', t.size, t.at, t.at, t.at
FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[]) AS t(owner, size, at, n)
JOIN senders s ON s.owner_id = t.owner AND s.is_default
RETURNING id"""

# One campaign's emails, 250 ms apart, as the worker and recorder leave them.
DISPATCHES_SQL = """
WITH src AS (
    SELECT c.id AS campaign_id, c.owner_id, c.sender_id, s.from_address, g,
           c.start_at + g * interval '250 ms' AS at,
           'p' || c.id || '.' || g || '@' || ($2::text[])[1 + (c.id * 31 + g) % $3] AS recipient,
           random() AS roll
    FROM campaigns c JOIN senders s ON s.id = c.sender_id,
         generate_series(1, c.total) g
    WHERE c.id = ANY($1::bigint[])
), shaped AS (
    SELECT *, sha256(convert_to(campaign_id || '/' || recipient || '/' || at, 'UTF8')) AS k,
           CASE WHEN roll < 0.94 THEN 'sent' WHEN roll < 0.98 THEN 'failed'
                ELSE 'cancelled' END AS status
    FROM src
)
INSERT INTO dispatches (campaign_id, owner_id, sender_id, recipient, scheduled_at, status,
                        attempts, last_error, idempotency_key, message_id, sent_at,
                        finished_at, updated_at)
SELECT campaign_id, owner_id, sender_id, recipient, at, status,
       CASE status WHEN 'sent' THEN 1 WHEN 'failed' THEN 3 ELSE 0 END,
       CASE status WHEN 'failed'
            THEN '550 5.1.1 <' || recipient || '>: Recipient address rejected' END,
       k,
       CASE status WHEN 'sent' THEN '<' || left(encode(k, 'hex'), 40) || '@'
            || split_part(from_address, '@', 2) || '>' END,
       CASE status WHEN 'sent' THEN at + interval '40 ms' END,
       CASE status WHEN 'sent' THEN at + interval '40 ms'
                   WHEN 'failed' THEN at + interval '5 minutes' ELSE at END,
       at + interval '1 second'
FROM shaped"""

# The sends of the POSTed campaigns (all but the newest), as if a worker had made them.
MARK_SENT_SQL = """
UPDATE dispatches d SET status = 'sent', attempts = 1,
       message_id = '<' || left(encode(d.idempotency_key, 'hex'), 40) || '@'
                    || split_part(s.from_address, '@', 2) || '>',
       sent_at = d.scheduled_at + interval '40 ms', finished_at = d.scheduled_at
       + interval '40 ms', updated_at = now()
FROM senders s WHERE s.id = d.sender_id AND d.campaign_id = ANY($1::bigint[])"""

LEDGER_SQL = """
INSERT INTO ledger (idempotency_key, dispatch_id, state, attempt_token, transport, message_id,
                    response, at)
SELECT d.idempotency_key, d.id, CASE d.status WHEN 'sent' THEN 'sent' ELSE 'sending' END,
       'bench-fill', 'smtp',
       COALESCE(d.message_id, '<' || left(encode(d.idempotency_key, 'hex'), 40) || '@bench>'),
       CASE d.status WHEN 'sent' THEN '250 2.0.0 Ok: queued as '
            || upper(left(encode(d.idempotency_key, 'hex'), 12)) END,
       COALESCE(d.sent_at, d.finished_at)
FROM dispatches d WHERE d.campaign_id = ANY($1::bigint[]) AND d.status IN ('sent', 'failed')"""


async def fill(args: argparse.Namespace, db: Any, posted: list[int]) -> dict[str, Any]:
    """Bring dispatches to --total rows, in the app's shape; returns what it made."""
    import random
    from datetime import UTC, datetime, timedelta

    t0 = time.perf_counter()
    done = posted[:-1]  # the newest POSTed campaign stays scheduled
    await db.execute(MARK_SENT_SQL, done)
    await db.execute(LEDGER_SQL, done)
    await db.execute("UPDATE campaigns SET status = 'completed' WHERE id = ANY($1::bigint[])", done)
    await db.execute(USERS_SQL, args.users - 1)
    await db.execute(SENDERS_SQL)
    dev = await db.fetchval("SELECT id FROM users WHERE email = $1", DEV_EMAIL)
    others = [
        r["id"] for r in await db.fetch("SELECT id FROM users WHERE id <> $1 ORDER BY id", dev)
    ]
    missing = args.total - await db.fetchval("SELECT count(*) FROM dispatches")
    rng = random.Random(8)
    now = datetime.now(UTC)
    made = 0
    while missing > 0:
        owners: list[int] = []
        sizes: list[int] = []
        ats: list[datetime] = []
        numbers: list[int] = []
        batch = 0
        while missing > 0 and batch < 100_000:
            size = min(missing, rng.choice((30, 120, 400, 900, 2500, 6000)))
            # Half of the rows are the dev user's (the one measured), the rest shared.
            owners.append(dev if rng.random() < 0.5 or not others else rng.choice(others))
            sizes.append(size)
            ats.append(now - timedelta(days=180 * rng.random(), minutes=60))
            numbers.append(made + len(numbers) + 1)
            missing -= size
            batch += size
        ids = [r["id"] for r in await db.fetch(CAMPAIGNS_SQL, owners, sizes, ats, numbers)]
        await db.execute(DISPATCHES_SQL, ids, DOMAINS, len(DOMAINS))
        await db.execute(LEDGER_SQL, ids)
        made += len(ids)
        print(f"  fill: {args.total - missing:,} dispatches…", file=sys.stderr)
    for name in ("dispatches", "ledger", "campaigns"):
        await db.execute(f"VACUUM (ANALYZE) {name}")
    counts = await db.fetch(
        """SELECT u.email = $1 AS dev, d.status, count(*) AS n FROM dispatches d
           JOIN users u ON u.id = d.owner_id GROUP BY 1, 2 ORDER BY 1 DESC, 2""",
        DEV_EMAIL,
    )
    return {
        "seconds": time.perf_counter() - t0,
        "campaigns": await db.fetchval("SELECT count(*) FROM campaigns"),
        "users": await db.fetchval("SELECT count(*) FROM users"),
        "ledger": await db.fetchval("SELECT count(*) FROM ledger"),
        "counts": [(r["dev"], r["status"], r["n"]) for r in counts],
        "dev_id": dev,
        "size": await db.fetchval("SELECT pg_size_pretty(pg_total_relation_size('dispatches'))"),
    }

"""A sender's own `min_gap_ms` spaces its emails, whichever campaign they belong to."""

from __future__ import annotations

import itertools

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for

GAP_MS = 200
# The gap is enforced when a send is decided; the capture inbox stamps a message a few ms
# later (ledger row, render, insert), and that delay varies a little from one email to
# the next. Without the sender's gap the sends of a batch land within a few ms.
SLACK_MS = 40


async def test_a_senders_min_gap_spaces_its_emails_across_campaigns(
    make_client: Start, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store))
    created = await client.post(
        "/api/senders",
        json={"from_address": "paced@example.com", "transport": "capture", "min_gap_ms": GAP_MS},
        headers=headers,
    )
    assert created.status == 201, await created.text()
    sender = (await created.json())["id"]
    campaigns = []
    for name in ("a", "b"):  # two campaigns without a delay of their own, at the same time
        payload = {"subject": "s", "body": "b", "sender": str(sender),
                   "recipients": [f"{name}{i}@example.com" for i in range(4)]}  # fmt: skip
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert response.status == 201, await response.text()
        campaigns.append((await response.json())["campaign"]["id"])

    async def all_sent() -> bool:
        sent = await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE status = 'sent'")
        return bool(sent == 8)

    await wait_for(all_sent)
    rows = await store.pool.fetch(
        """SELECT d.campaign_id, m.received_at FROM captured_messages m
           JOIN dispatches d ON d.id = m.dispatch_id
           WHERE d.sender_id = $1 ORDER BY m.received_at""",
        sender,
    )
    assert len(rows) == 8 and {r["campaign_id"] for r in rows} == set(campaigns)
    times = [r["received_at"].timestamp() * 1000 for r in rows]
    gaps = [round(b - a) for a, b in itertools.pairwise(times)]
    assert min(gaps) >= GAP_MS - SLACK_MS, gaps

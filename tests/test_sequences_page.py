"""The campaign page shows a sequence's steps, its recipients by state, and stops one."""

from __future__ import annotations

import re
from html import unescape

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.web_session import dev_login
from .test_sequences import sequence_payload


async def test_the_campaign_page_lists_the_steps_and_stops_a_recipient(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles={"api"})
    csrf = await dev_login(client)
    payload = sequence_payload(["kim@example.com", "lee@example.com"])
    payload["start_at"] = "2099-01-01T00:00:00Z"  # nothing sends: the page shows them active
    created = await client.post(
        "/api/emails/schedule", json=payload, headers={"X-CSRF-Token": csrf}
    )
    assert created.status == 201, await created.text()
    campaign_id = (await created.json())["campaign"]["id"]

    page = await (await client.get(f"/campaigns/{campaign_id}")).text()
    assert "0 of 6 done" in page  # 2 recipients, 3 emails each
    assert 'aria-labelledby="sequence-heading"' in page
    assert "Re: Hello {{ name }}" in unescape(page) and "Last note, {{ name }}" in unescape(page)
    assert re.search(r'data-member-count="active">2<', page)
    forms = re.findall(r'action="(/api/campaigns/\d+/recipients/[^"]+/stop)"', page)
    assert len(forms) == 2 and 'aria-label="Stop the sequence of kim@example.com"' in page

    kim = next(f for f in forms if "kim" in f)
    stopped = await client.post(unescape(kim), headers={"X-CSRF-Token": csrf})
    assert stopped.status == 200, await stopped.text()
    page = await (await client.get(f"/campaigns/{campaign_id}")).text()
    assert re.search(r'data-member-count="stopped">1<', page)
    assert "stopped (manual)" in page
    assert len(re.findall(r'/recipients/[^"]+/stop"', page)) == 1  # lee's only
    status = await store.pool.fetchval(
        "SELECT status FROM dispatches WHERE recipient = 'kim@example.com'"
    )
    assert status == "cancelled"  # its queued first email goes too

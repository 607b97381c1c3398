"""What an HTTP client relies on beyond the body: a 201 names the new object's URL in
`Location`, which answers; a 401 says which scheme it wants in `WWW-Authenticate`."""

from __future__ import annotations

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token

API = frozenset({"api"})


async def test_a_401_names_the_bearer_scheme(make_client: Start) -> None:
    client = await make_client(roles=API)
    missing = await client.get("/api/me")
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer ")
    refused = await client.get("/api/me", headers=auth("de_wrong"))
    assert refused.status == 401
    challenge = refused.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge


async def test_each_201_carries_the_location_of_what_it_made(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    headers = auth(await new_token(store))
    sender = await client.post(
        "/api/senders",
        json={"from_address": "news@example.com", "transport": "capture"},
        headers=headers,
    )
    assert sender.status == 201, await sender.text()
    found = await client.get(sender.headers["Location"], headers=headers)
    assert found.status == 200 and (await found.json())["id"] == (await sender.json())["id"]

    payload = {"subject": "Hi", "body": "b", "recipients": ["a@example.com"]}
    scheduled = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert scheduled.status == 201, await scheduled.text()
    campaign = await client.get(scheduled.headers["Location"], headers=headers)
    campaign_id = (await scheduled.json())["campaign"]["id"]
    assert campaign.status == 200 and (await campaign.json())["id"] == campaign_id

    token = await client.post("/api/tokens", json={"name": "ci"}, headers=headers)
    assert token.status == 201, await token.text()
    assert token.headers["Location"] == f"/api/tokens/{(await token.json())['id']}"
    revoked = await client.delete(token.headers["Location"], headers=headers)
    assert revoked.status == 200, await revoked.text()

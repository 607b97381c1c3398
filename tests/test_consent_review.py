"""A reviewer's attacks on consent and feedback through the real app: NUL bytes in what users
and remote servers send, formulas in the CSV export, Message-IDs an outsider can compute,
and the work one webhook request can cause."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime
from typing import Any

import aiohttp
import pytest

from dispatch_engine.builtins.provider_webhooks.reported import MAX_MESSAGE_IDS
from dispatch_engine.config import Settings
from dispatch_engine.consent.feedback import Feedback, FeedbackEvent, FeedbackKind
from dispatch_engine.consent.settings import ConsentSettings
from dispatch_engine.message_ids import message_id_for
from dispatch_engine.setting import settings_of
from dispatch_engine.store import Store
from dispatch_engine.store.feedback import FeedbackQueries

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .test_provider_webhooks_routes import POSTMARK, configured, post

API = frozenset({"api"})


async def _json(response: aiohttp.ClientResponse, status: int) -> Any:
    body = await response.json()
    assert response.status == status, body
    return body


async def test_a_nul_byte_in_a_detail_or_address_is_a_422_naming_the_field(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    for body, field in (
        ({"emails": ["a@example.com"], "detail": "x\x00y"}, "detail"),
        ({"emails": ["a\x00b@example.com"]}, "emails"),
    ):
        response = await client.post("/api/suppressions", json=body, headers=ada)
        assert (await _json(response, 422))["error"]["field"] == field
    source = b"email,detail\nb@example.com,bad\x00detail\n"
    response = await client.post(
        "/api/suppressions/import", data=source, headers={**ada, "Content-Type": "text/csv"}
    )
    assert (await _json(response, 422))["error"]["code"] == "no_valid_addresses"
    lookup = await client.get("/api/suppressions?email=a%00b@example.com", headers=ada)
    assert (await _json(lookup, 422))["error"]["field"] == "email"
    delete = await client.delete("/api/suppressions/a%00b@example.com", headers=ada)
    assert (await _json(delete, 422))["error"]["field"] == "email"


async def test_a_report_whose_detail_and_id_hold_nul_bytes_is_still_applied(
    make_client: Start, store: Store, settings: Settings
) -> None:
    """A remote MTA writes a DSN's diagnostic and a provider its event id: a NUL byte in
    either must not make the report fail for ever (a webhook retried, a mailbox re-read)."""
    client = await make_client()
    headers = auth(await new_token(store, "ada@example.com"))
    payload = {"subject": "Hi", "body": "Hello", "recipients": ["bob@example.com"]}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign = (await response.json())["campaign"]["id"]

    query = "SELECT id, owner_id FROM dispatches WHERE campaign_id = $1 AND status = 'sent'"

    async def sent() -> bool:
        return await store.pool.fetchrow(query, campaign) is not None

    await wait_for(sent)
    row = await store.pool.fetchrow(query, campaign)
    assert row is not None
    feedback = Feedback(store, settings_of(ConsentSettings, settings))
    event = FeedbackEvent(
        FeedbackKind.HARD_BOUNCE, "imap", "dsn\x00-1", dispatch_id=row["id"],
        detail="550 5.1.1 no\x00 such user",
    )  # fmt: skip
    result = await feedback.handle([event])
    assert len(result.applied) == 1
    found = await store.suppression(row["owner_id"], "bob@example.com")
    assert found is not None and found.detail == "550 5.1.1 no such user"
    assert (await feedback.handle([event])).duplicates == 1


async def test_an_export_neutralises_formulas_and_reads_back_the_same(
    make_client: Start, store: Store
) -> None:
    """A detail is outside text (a remote MTA's diagnostic): a spreadsheet opening the export
    must not run `=HYPERLINK(…)` (OWASP CSV injection: a leading `'`), and the export read
    back by an import gives the original detail."""
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    formulas = ["=HYPERLINK(\"http://evil.example\",\"x\")", "+1+2", "-2+3", "@SUM(A1)",
                "\tx", "\rx", "plain"]  # fmt: skip
    for n, detail in enumerate(formulas):
        body = {"emails": [f"user{n}@example.com"], "detail": detail}
        await _json(await client.post("/api/suppressions", json=body, headers=ada), 201)
    export = await client.get("/api/suppressions/export", headers=ada)
    text = await export.text()
    cells = [r["detail"] for r in csv.DictReader(io.StringIO(text))]
    assert cells and all(cell[:1] not in ("=", "+", "-", "@", "\t", "\r") for cell in cells)
    assert "'=HYPERLINK" in text and "plain" in cells
    eve = auth(await new_token(store, "eve@example.com"))
    reimport = await client.post(
        "/api/suppressions/import", data=text.encode(), headers={**eve, "Content-Type": "text/csv"}
    )
    assert (await _json(reimport, 201))["added"] == len(formulas)
    got = {s["email"]: s["detail"] for s in (await _json(
        await client.get("/api/suppressions", headers=eve), 200))["items"]}  # fmt: skip
    want = {f"user{n}@example.com": d.strip() for n, d in enumerate(formulas)}
    assert got == want


async def test_a_forged_dsn_cannot_name_another_tenants_email_by_computing_its_message_id(
    make_client: Start, store: Store, settings: Settings
) -> None:
    """Anyone on the Internet can mail the bounce mailbox, and a DSN matches by Message-ID.
    The Message-ID must not be computable from what an outsider knows or guesses (the
    campaign id is a sequence, the recipient and the start time are the victim's plans):
    else a forged DSN suppresses another tenant's recipient and pauses its campaign."""
    client = await make_client()
    victim = auth(await new_token(store, "victim@example.com"))
    start_at = "2031-01-01T09:00:00Z"
    payload = {"subject": "Hi", "body": "Hello", "recipients": ["bob@example.com"],
               "start_at": start_at}  # fmt: skip
    response = await client.post("/api/emails/schedule", json=payload, headers=victim)
    assert response.status == 201, await response.text()
    campaign = (await response.json())["campaign"]["id"]
    due_us = int(datetime.fromisoformat(start_at).timestamp() * 1000) * 1000
    seed = f"{campaign}\x00bob@example.com\x00{due_us}".encode()  # what an outsider knows
    guessed = message_id_for(hashlib.sha256(seed).digest(), "x@x.example")
    forged = FeedbackEvent(FeedbackKind.HARD_BOUNCE, "imap", "forged-1", message_id=guessed,
                           detail="550 5.1.1 forged")  # fmt: skip
    feedback = Feedback(store, settings_of(ConsentSettings, settings))
    result = await feedback.handle([forged])
    assert result.unmatched == 1 and not result.applied
    owner = await store.pool.fetchval("SELECT owner_id FROM campaigns WHERE id = $1", campaign)
    assert await store.suppression(owner, "bob@example.com") is None


async def test_a_webhook_report_is_looked_up_a_bounded_number_of_times(
    make_client: Start, store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Postmark bounce's `Content` (the returned message) may hold any number of
    Message-ID lines: each was one PostgreSQL look-up, ~50,000 for one 1 MB request."""
    client = await make_client(configured(settings))
    lookups = 0
    real = FeedbackQueries.feedback_target

    async def counted(self: Any, dispatch_id: int | None, message_id: str | None) -> Any:
        nonlocal lookups
        lookups += 1
        return await real(self, dispatch_id, message_id)

    monkeypatch.setattr(FeedbackQueries, "feedback_target", counted)
    content = "".join(f"Message-ID: <{n:040x}@x.example>\r\n" for n in range(2000))
    record = {"RecordType": "Bounce", "ID": 43, "Type": "HardBounce", "Email": "bob@example.com",
              "Content": content}  # fmt: skip
    status, answer = await post(client, "postmark", record, Authorization=POSTMARK)
    assert status == 200 and answer["unmatched"] == 1
    assert lookups <= 1 + MAX_MESSAGE_IDS

"""The suppression list over the API: add (manual only, bad addresses by index), list with
keyset paging, exact look-up, remove, CSV import (bad rows by line) and export; one form of
an address (case, IDN); and one owner never sees, learns of or removes another's entries."""

from __future__ import annotations

import csv
import io
from typing import Any

import aiohttp

from dispatch_engine.config import Settings
from dispatch_engine.consent.addresses import normalize_address
from dispatch_engine.store import Store
from dispatch_engine.suppressions import address_key

from .conftest import fast
from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token

API = frozenset({"api"})


async def _json(response: aiohttp.ClientResponse, status: int) -> Any:
    body = await response.json()
    assert response.status == status, body
    return body


async def _list(client: AppClient, headers: dict[str, str], query: str = "") -> Any:
    return await _json(await client.get(f"/api/suppressions{query}", headers=headers), 200)


def test_the_fast_key_of_a_validated_address_is_its_one_form() -> None:
    for address in ("Ada@Example.COM", "bob@bücher.example", "Bob@bücher.example",
                    "x.y+tag@Sub.Example.org", "Zoë@example.com"):  # fmt: skip
        assert address_key(address) == normalize_address(address)


async def test_an_owner_adds_lists_pages_looks_up_and_removes(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    emails = [f"user{n}@Example.com" for n in range(5)]
    body = {"emails": [*emails, "not an address", 7, "USER0@example.COM"], "detail": "by phone"}
    added = await _json(await client.post("/api/suppressions", json=body, headers=ada), 201)
    assert added["added"] == 5 and added["already_suppressed"] == 0
    assert [(r["index"], r["value"]) for r in added["rejected"]] == [
        (5, "not an address"),
        (6, "7"),
    ]
    assert added["rejected_total"] == 2
    again = await client.post("/api/suppressions", json={"email": "user1@EXAMPLE.com"}, headers=ada)
    assert (await _json(again, 200))["already_suppressed"] == 1

    first = await _list(client, ada, "?limit=2")
    assert [s["email"] for s in first["items"]] == ["user4@example.com", "user3@example.com"]
    assert first["items"][0]["reason"] == "manual" and first["items"][0]["source"] == "api"
    assert first["items"][0]["detail"] == "by phone"
    seen = [s["email"] for s in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = await _list(client, ada, f"?limit=2&cursor={cursor}")
        seen += [s["email"] for s in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [f"user{n}@example.com" for n in (4, 3, 2, 1, 0)]  # each once, newest first
    bad_cursor = await client.get("/api/suppressions?cursor=WyJ4IiwgMV0", headers=ada)
    assert (await _json(bad_cursor, 422))["error"]["field"] == "cursor"

    found = await _list(client, ada, "?email=USER2@example.COM")
    assert [s["email"] for s in found["items"]] == ["user2@example.com"]
    assert (await _list(client, ada, "?email=nobody@example.com"))["items"] == []

    removed = await client.delete("/api/suppressions/User2@Example.com", headers=ada)
    assert (await _json(removed, 200))["removed"] == "user2@example.com"
    gone = await client.delete("/api/suppressions/user2@example.com", headers=ada)
    assert (await _json(gone, 404))["error"]["code"] == "not_found"
    assert (await _list(client, ada, "?email=user2@example.com"))["items"] == []


async def test_users_add_only_manual_entries_and_an_empty_add_is_refused(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    for body, field in (
        ({"emails": ["a@example.com"], "reason": "complaint"}, "reason"),
        ({"emails": ["a@example.com"], "reason": "nonsense"}, "reason"),
        ({"emails": []}, "emails"),
        ({"emails": "a@example.com"}, "emails"),
        ({"emails": ["a@example.com"], "detail": "x" * 1001}, "detail"),
        ({"emails": ["nope", "@example.com"]}, "emails"),
    ):
        response = await client.post("/api/suppressions", json=body, headers=ada)
        assert (await _json(response, 422))["error"]["field"] == field
    assert (await _list(client, ada))["items"] == []


async def test_idn_and_case_are_one_address(make_client: Start, store: Store) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    body = {"emails": ["Bob@BÜCHER.example"]}
    await _json(await client.post("/api/suppressions", json=body, headers=ada), 201)
    found = await _list(client, ada, "?email=bob@xn--bcher-kva.example")
    assert [s["email"] for s in found["items"]] == ["bob@xn--bcher-kva.example"]
    removed = await client.delete("/api/suppressions/BOB@bücher.example", headers=ada)
    assert (await _json(removed, 200))["removed"] == "bob@xn--bcher-kva.example"


async def test_a_csv_import_reports_bad_rows_by_line_and_an_export_reads_back(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    source = (
        "email,reason,detail\n"
        "carol@example.com,unsubscribed,from our old tool\n"
        "not-an-address,,\n"
        "dave@example.com,,\n"
        "erin@example.com,made-up,\n"
        "Carol@EXAMPLE.com,complaint,\n"
    )
    form = aiohttp.FormData()
    form.add_field("file", source.encode(), filename="list.csv", content_type="text/csv")
    answer = await _json(await client.post("/api/suppressions/import", data=form, headers=ada), 201)
    assert answer["added"] == 2
    assert [(r["line"], r["value"]) for r in answer["rejected"]] == [
        (3, "not-an-address"),
        (5, "erin@example.com"),
        (6, "Carol@EXAMPLE.com"),  # a duplicate of line 2
    ]
    assert "reason" in answer["rejected"][1]["reason"]
    listed = {s["email"]: s for s in (await _list(client, ada))["items"]}
    assert listed["carol@example.com"]["reason"] == "unsubscribed"
    assert listed["carol@example.com"]["source"] == "csv"
    assert listed["dave@example.com"]["reason"] == "manual"

    export = await client.get("/api/suppressions/export", headers=ada)
    assert export.status == 200 and export.content_type == "text/csv"
    assert "attachment" in export.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(await export.text())))
    assert {(r["email"], r["reason"], r["detail"]) for r in rows} == {
        ("carol@example.com", "unsubscribed", "from our old tool"),
        ("dave@example.com", "manual", ""),
    }
    # The export imported by another owner gives the same list (a plain text/csv body too).
    eve = auth(await new_token(store, "eve@example.com"))
    reimport = await client.post(
        "/api/suppressions/import",
        data=await export.read(),
        headers={**eve, "Content-Type": "text/csv"},
    )
    assert (await _json(reimport, 201))["added"] == 2
    eve_rows = {(s["email"], s["reason"]) for s in (await _list(client, eve))["items"]}
    assert eve_rows == {(r["email"], r["reason"]) for r in rows}


async def test_an_import_is_held_to_the_upload_caps(
    make_client: Start, store: Store, settings: Settings
) -> None:
    client = await make_client(fast(settings, max_upload_lines=3, max_upload_bytes=2048), API)
    ada = auth(await new_token(store))
    csv_headers = {**ada, "Content-Type": "text/csv"}
    lines = "email\na@example.com\nb@example.com\nc@example.com\n"
    too_long = await client.post("/api/suppressions/import", data=lines, headers=csv_headers)
    assert (await _json(too_long, 422))["error"]["code"] == "too_many_lines"
    big = "email\n" + "x" * 3000
    too_big = await client.post("/api/suppressions/import", data=big, headers=csv_headers)
    assert (await _json(too_big, 413))["error"]["code"] == "too_large"
    other = await client.post(
        "/api/suppressions/import", data=b"{}", headers={**ada, "Content-Type": "application/json"}
    )
    assert (await _json(other, 400))["error"]["code"] == "unsupported_media_type"
    assert (await _list(client, ada))["items"] == []


async def test_another_owner_can_neither_list_find_remove_nor_learn_of_an_entry(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    ada = auth(await new_token(store))
    eve = auth(await new_token(store, "eve@example.com"))
    body = {"emails": ["secret@example.com"], "detail": "ada's note"}
    await _json(await client.post("/api/suppressions", json=body, headers=ada), 201)

    assert (await _list(client, eve))["items"] == []
    looked_up = await _list(client, eve, "?email=secret@example.com")
    never = await _list(client, eve, "?email=never-suppressed@example.com")
    assert looked_up == never == {"items": [], "next_cursor": None}  # nothing to tell apart
    removed = await client.delete("/api/suppressions/secret@example.com", headers=eve)
    absent = await client.delete("/api/suppressions/never-suppressed@example.com", headers=eve)
    assert (await _json(removed, 404)) == (await _json(absent, 404))
    export = await client.get("/api/suppressions/export", headers=eve)
    assert "secret" not in await export.text()
    # Eve's own entry of the same address is hers alone, and adding it told her nothing.
    mine = await client.post("/api/suppressions", json={"emails": ["secret@example.com"]},
                             headers=eve)  # fmt: skip
    assert (await _json(mine, 201))["added"] == 1

    kept = await _list(client, ada, "?email=secret@example.com")
    assert [s["detail"] for s in kept["items"]] == ["ada's note"]
    assert (await _list(client, eve, "?email=secret@example.com"))["items"][0]["detail"] == ""

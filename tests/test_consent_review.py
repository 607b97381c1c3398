"""A reviewer's attacks on the consent routes: hostile details (NUL bytes, CSV formulas) in
the suppression API and its CSV import and export."""

from __future__ import annotations

from typing import Any

import aiohttp

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token

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


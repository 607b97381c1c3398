"""CSRF on multipart bodies: the compose form with a CSV upload is a form like any other."""

from __future__ import annotations

from aiohttp import FormData

from dispatch_engine.store import Store

from .support.app_client import Start
from .support.web_session import dev_login

CSV = b"email,name\nann@example.com,Ann\nbob@example.com,Bob\n"


def _compose_form(csrf: str | None) -> FormData:
    """The compose page's form as a browser posts it with a file chosen: multipart/form-data."""
    form = FormData()
    for name, value in (("subject", "Hi {{ name }}"), ("body", "Hello"),
                        ("start_local", "2099-01-01T09:00"), ("tz", "UTC")):  # fmt: skip
        form.add_field(name, value)
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    form.add_field("recipients_file", CSV, filename="list.csv", content_type="text/csv")
    return form


async def test_the_compose_form_with_a_csv_upload_needs_the_csrf_token(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    token = await dev_login(client)
    for csrf in (None, "0" * len(token)):
        refused = await client.post("/compose", data=_compose_form(csrf), allow_redirects=False)
        assert refused.status == 403, csrf
        assert "CSRF" in await refused.text()
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0

    accepted = await client.post("/compose", data=_compose_form(token), allow_redirects=False)
    assert accepted.status == 303, await accepted.text()
    assert accepted.headers["Location"].startswith("/emails?scheduled=")
    assert await store.pool.fetchval("SELECT count(*) FROM dispatches") == 2


async def test_a_multipart_api_call_with_the_session_cookie_needs_the_csrf_header(
    make_client: Start,
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    token = await dev_login(client)

    def upload() -> FormData:
        form = FormData()
        form.add_field("csrf_token", token)  # the API reads the token from its header only
        form.add_field("recipients_file", CSV, filename="list.csv", content_type="text/csv")
        return form

    refused = await client.post("/api/compose/recipients", data=upload())
    assert refused.status == 403
    assert (await refused.json())["error"]["code"] == "csrf_failed"
    checked = await client.post(
        "/api/compose/recipients", data=upload(), headers={"X-CSRF-Token": token}
    )
    assert checked.status == 200, await checked.text()
    assert (await checked.json())["valid"] == 2

"""The browser's gate (web/guard.py): plain forms posted to the API, refusals a person can
read, pages versus API answers. Written for mutants of guard.py the suite let through."""

from __future__ import annotations

from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token
from .support.web_session import csrf_of, dev_login

FUTURE = "2099-01-01T00:00:00Z"


async def _campaign(client: AppClient, token: str) -> int:
    payload = {"subject": "s", "body": "b", "recipients": ["a@example.com"], "start_at": FUTURE}
    response = await client.post("/api/emails/schedule", json=payload, headers={
        "X-CSRF-Token": token})  # fmt: skip
    assert response.status == 201, await response.text()
    return int((await response.json())["campaign"]["id"])


async def test_a_plain_form_posted_to_the_api_redirects_back_or_shows_the_error(
    make_client: Start,
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    token = await dev_login(client)
    campaign = await _campaign(client, token)
    back = f"/campaigns/{campaign}"
    form = {"csrf_token": token, "next": back}  # the page's form, JavaScript off
    done = await client.post(f"/api/campaigns/{campaign}/pause", data=form, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == back
    # Pausing twice is refused: the person sees the reason on a page, not JSON.
    again = await client.post(f"/api/campaigns/{campaign}/pause", data=form)
    assert again.status == 409 and again.content_type == "text/html"
    assert "only a campaign that is" in await again.text()
    # Without a `next` field the Referer of this site is where it goes back to; another's, not.
    resume = f"/api/campaigns/{campaign}/resume"
    referer = {"Referer": str(client.make_url("/emails?page=2"))}
    done = await client.post(resume, data={"csrf_token": token}, headers=referer,
                             allow_redirects=False)  # fmt: skip
    assert done.status == 303 and done.headers["Location"] == "/emails?page=2"
    done = await client.post(f"/api/campaigns/{campaign}/pause", data={"csrf_token": token},
                             headers={"Referer": "https://evil.example/x"},
                             allow_redirects=False)  # fmt: skip
    assert done.status == 303 and done.headers["Location"] == "/"


async def test_refusals_say_why_in_words_a_person_can_act_on(make_client: Start) -> None:
    client = await make_client(roles=frozenset({"api"}))
    # No cookie at all: the session expired (or cookies are blocked).
    expired = await client.post("/compose", data={"subject": "s"})
    assert expired.status == 403 and "session has expired" in await expired.text()
    # The browser's token before login, but no session: sign in first, as a page.
    page = await (await client.get("/login")).text()
    refused = await client.post("/compose", data={"csrf_token": csrf_of(page)})
    assert refused.status == 403 and refused.content_type == "text/html"
    assert "Please sign in first." in await refused.text()


async def test_pages_and_the_api_answer_a_missing_address_each_in_their_own_way(
    make_client: Start,
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    await dev_login(client)
    page = await client.get("/no-such-page")
    assert page.status == 404 and page.content_type == "text/html"
    assert "There is nothing at this address." in await page.text()
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    api = await client.get("/api/no-such-thing")
    assert api.status == 404 and "Content-Security-Policy" not in api.headers


async def test_a_bearer_token_needs_no_csrf_token_even_beside_a_session_cookie(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    await dev_login(client)  # the cookie jar now holds a session
    headers = auth(await new_token(store, "script@example.com"))
    payload = {"subject": "s", "body": "b", "recipients": ["a@example.com"], "start_at": FUTURE}
    created = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert created.status == 201, await created.text()

"""API tokens: listed without secrets, revoked and expired tokens refused at once (in this
process and in a second `dispatch-engine run`), scoped to their owner, and the dashboard's
"API tokens" page with its CSRF-protected forms."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, expect

from dispatch_engine.auth import DEV_EMAIL
from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.browser import snapshot
from .support.helpers import auth, new_token
from .support.processes import Proc, run_cli
from .support.web_session import csrf_of, dev_login

API = frozenset({"api"})
MAX_LIVE_TOKENS = 100  # per user, as docs/operations.md says


async def _me(client: AppClient, token: str) -> int:
    return (await client.get("/api/me", headers=auth(token))).status


async def test_api_creates_lists_and_revokes_a_token_refused_at_once(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    first = await new_token(store)
    response = await client.post(
        "/api/tokens", json={"name": "deploys", "expires_in": "30d"}, headers=auth(first)
    )
    made = await response.json()
    assert response.status == 201, made
    secret = made["token"]
    assert secret.startswith("de_") and made["prefix"] == secret[:11]
    assert made["status"] == "active" and made["expires_at"] and made["name"] == "deploys"
    assert await _me(client, secret) == 200

    listing = await client.get("/api/tokens", headers=auth(secret))
    text = await listing.text()
    assert listing.status == 200
    assert secret not in text and first not in text  # never a secret in a list
    items = (await listing.json())["items"]
    assert [t["name"] for t in items] == ["deploys", "test"]
    assert all("token" not in t for t in items)
    assert items[0]["last_used_at"] is not None  # it was just used

    revoked = await client.delete(f"/api/tokens/{made['id']}", headers=auth(first))
    assert revoked.status == 200 and (await revoked.json())["revoked"] == [made["id"]]
    refused = await client.get("/api/me", headers=auth(secret))
    assert refused.status == 401
    assert (await refused.json())["error"]["code"] == "invalid_token"
    again = await client.delete(f"/api/tokens/{made['id']}", headers=auth(first))
    assert again.status == 200 and (await again.json())["revoked"] == []
    statuses = {t["id"]: t["status"] for t in (await (await client.get(
        "/api/tokens", headers=auth(first))).json())["items"]}  # fmt: skip
    assert statuses[made["id"]] == "revoked"


async def test_a_token_made_by_a_leaked_token_dies_with_it(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    owner = await new_token(store)
    leaked = await (await client.post("/api/tokens", json={"name": "leaked", "expires_in": "1d"},
                                      headers=auth(owner))).json()  # fmt: skip
    child = await (await client.post(
        "/api/tokens", json={"name": "minted", "expires_in": "3650d"},
        headers=auth(leaked["token"]))).json()  # fmt: skip
    assert child["expires_at"] <= leaked["expires_at"]  # no longer-lived than its maker
    grandchild = await (await client.post(
        "/api/tokens", json={"name": "again"}, headers=auth(child["token"]))).json()  # fmt: skip
    assert grandchild["expires_at"] <= leaked["expires_at"]

    response = await client.delete(f"/api/tokens/{leaked['id']}", headers=auth(owner))
    assert sorted((await response.json())["revoked"]) == sorted(
        [leaked["id"], child["id"], grandchild["id"]]
    )
    for made in (leaked, child, grandchild):
        assert await _me(client, made["token"]) == 401
    assert await _me(client, owner) == 200


async def test_an_expired_token_is_refused(make_client: Start, store: Store) -> None:
    client = await make_client(roles=API)
    owner = await new_token(store)
    made = await (await client.post("/api/tokens", json={"name": "short", "expires_in": "1m"},
                                    headers=auth(owner))).json()  # fmt: skip
    assert await _me(client, made["token"]) == 200
    # The minute passes (moved in the database instead of waited for).
    await store.pool.execute(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
        made["id"],
    )
    response = await client.get("/api/me", headers=auth(made["token"]))
    assert response.status == 401
    assert "expired" in (await response.json())["error"]["message"]
    items = (await (await client.get("/api/tokens", headers=auth(owner))).json())["items"]
    assert {t["id"]: t["status"] for t in items}[made["id"]] == "expired"


async def test_last_used_is_written_at_most_once_a_minute(make_client: Start, store: Store) -> None:
    client = await make_client(roles=API)
    token = await new_token(store)
    sql = "SELECT last_used_at FROM api_tokens WHERE name = 'test'"
    assert await store.pool.fetchval(sql) is None
    assert await _me(client, token) == 200
    first = await store.pool.fetchval(sql)
    assert first is not None
    assert await _me(client, token) == 200
    assert await store.pool.fetchval(sql) == first  # within the minute: not written again
    await store.pool.execute("UPDATE api_tokens SET last_used_at = now() - interval '61 s'")
    older = await store.pool.fetchval(sql)
    assert await _me(client, token) == 200
    assert await store.pool.fetchval(sql) > older


async def test_another_user_can_neither_list_nor_revoke_my_tokens(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    mine = await new_token(store, "ada@example.com")
    theirs = await new_token(store, "eve@example.com")
    my_id = (await (await client.get("/api/tokens", headers=auth(mine))).json())["items"][0]["id"]
    listed = await (await client.get("/api/tokens", headers=auth(theirs))).json()
    assert my_id not in [t["id"] for t in listed["items"]] and len(listed["items"]) == 1
    response = await client.delete(f"/api/tokens/{my_id}", headers=auth(theirs))
    assert response.status == 404
    assert await _me(client, mine) == 200


async def test_malformed_token_requests_get_a_4xx_naming_the_field(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    token = await new_token(store)
    cases = [({"name": "x" * 101}, "name"), ({"name": "a\r\nb"}, "name"), ({"name": 5}, "name"),
             ({"expires_in": "¹d"}, "expires_in"), ({"expires_in": "0m"}, "expires_in"),
             ({"expires_in": "99999999d"}, "expires_in"), ({"expires_in": 30}, "expires_in"),
             ({"scope": "all"}, "scope")]  # fmt: skip
    for body, field in cases:
        response = await client.post("/api/tokens", json=body, headers=auth(token))
        error = (await response.json())["error"]
        assert response.status == 422 and error["field"] == field, (body, error)
    response = await client.post("/api/tokens", data=b"{", headers=auth(token))
    assert response.status == 400
    for raw in ("¹", "9" * 30, "abc", "-1"):
        response = await client.delete(f"/api/tokens/{raw}", headers=auth(token))
        assert response.status in (404, 422), raw
        if response.status == 422:
            assert (await response.json())["error"]["field"] == "id"


async def test_live_tokens_per_user_are_capped(make_client: Start, store: Store) -> None:
    client = await make_client(roles=API)
    user = await store.ensure_user("ada@example.com")
    for n in range(MAX_LIVE_TOKENS - 10):
        token = await store.create_token(user.id, f"t{n}")
    # 20 at once for the last 10 places: the cap holds under concurrency too.
    answers = await asyncio.gather(*(
        client.post("/api/tokens", json={"name": f"c{n}"}, headers=auth(token))
        for n in range(20)))  # fmt: skip
    assert sorted(r.status for r in answers) == [201] * 10 + [409] * 10
    live = "SELECT count(*) FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL"
    assert await store.pool.fetchval(live, user.id) == MAX_LIVE_TOKENS
    response = await client.post("/api/tokens", json={"name": "one more"}, headers=auth(token))
    assert response.status == 409
    assert (await response.json())["error"]["code"] == "too_many_tokens"


async def test_cli_creates_lists_and_revokes_and_a_second_process_refuses_at_once(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    made = await asyncio.to_thread(
        run_cli, ["token", "create", "--email", "ada@example.com", "--name", "ci",
                  "--expires-in", "30d"], env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert re.fullmatch(r"de_[A-Za-z0-9_-]{43}", secret), made.stdout  # only the token

    listed = await asyncio.to_thread(run_cli, ["token", "list", "--email", "ada@example.com"], env)
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout and secret[:11] in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if "\tci\t" in line)
    token_id = row.split("\t")[0]
    assert "\tactive\t" in row and "never" not in row  # it has an expiry

    api = Proc(["run", "--role", "api", "--no-migrate"], env, tmp_path / "api.log")
    try:
        port = api.wait_for_output(r"Running api on http://127\.0\.0\.1:(\d+)").group(1)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/api/me", headers=auth(secret)) as response:
                assert response.status == 200
            revoked = await asyncio.to_thread(run_cli, ["token", "revoke", token_id], env)
            assert revoked.returncode == 0 and "Revoked token" in revoked.stdout, revoked.stderr
            async with http.get("/api/me", headers=auth(secret)) as response:
                assert response.status == 401  # the very next request, in another process
    finally:
        assert api.stop() == 0, api.output()

    missing = await asyncio.to_thread(run_cli, ["token", "revoke", "999999"], env)
    assert missing.returncode != 0 and "no token 999999" in missing.stderr
    bad = await asyncio.to_thread(run_cli, ["token", "revoke", "¹"], env)
    assert bad.returncode != 0 and "token id" in bad.stderr
    bad = await asyncio.to_thread(
        run_cli, ["token", "create", "--email", "a@example.com", "--expires-in", "soon"], env
    )
    assert bad.returncode != 0 and "--expires-in" in bad.stderr


async def test_the_tokens_page_creates_shows_once_and_revokes_with_csrf(
    make_client: Start, store: Store
) -> None:
    client = await make_client(roles=API)
    csrf = await dev_login(client)
    page = await client.get("/tokens")
    html = await page.text()
    assert page.status == 200 and 'href="/tokens"' in html and "No API tokens yet" in html

    created = await client.post(
        "/tokens", data={"csrf_token": csrf, "name": "laptop", "expires_in": "7d"}
    )
    html = await created.text()
    assert created.status == 200
    secret = re.search(r"data-token-secret>(de_[A-Za-z0-9_-]+)<", html)
    assert secret, html
    token = secret.group(1)
    assert await _me(client, token) == 200
    again = await (await client.get("/tokens")).text()
    assert token not in again and token[:11] in again and "laptop" in again  # shown once

    row = re.search(r'data-token="(\d+)"', again)
    assert row
    token_id = row.group(1)
    forged = await client.post(f"/tokens/{token_id}/revoke", data={"csrf_token": "0" * 64})
    assert forged.status == 403
    assert await _me(client, token) == 200  # the forged form did nothing

    revoked = await client.post(
        f"/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(again)}, allow_redirects=False
    )
    assert revoked.status == 303 and revoked.headers["Location"] == f"/tokens?revoked={token_id}"
    assert await _me(client, token) == 401

    other = await store.ensure_user("eve@example.com")
    theirs = await store.create_token(other.id, "eve's")
    their_id = await store.pool.fetchval("SELECT id FROM api_tokens WHERE user_id = $1", other.id)
    listed = await (await client.get("/tokens")).text()
    assert "eve&#39;s" not in listed and "eve's" not in listed
    response = await client.post(f"/tokens/{their_id}/revoke", data={"csrf_token": csrf})
    assert response.status == 404
    assert await _me(client, theirs) == 200

    bad = await client.post("/tokens", data={"csrf_token": csrf, "name": "", "expires_in": "1y"})
    assert bad.status == 422
    user = await store.ensure_user(DEV_EMAIL)
    assert len(await store.tokens_of(user.id)) == 1  # nothing made by the refused form


async def test_the_tokens_page_in_a_real_browser(make_client: Start, browser: Browser) -> None:
    """Chromium: the nav link, create (the secret shown once), the token works, revoke."""
    client = await make_client(roles=API)
    ctx = await browser.new_context(base_url=str(client.make_url("/")).rstrip("/"))
    try:
        page = await ctx.new_page()
        await page.goto("/login")
        await page.get_by_role("button", name="Continue as dev user").click()
        await page.wait_for_url("**/emails")
        await page.get_by_role("link", name="API tokens").click()
        await page.wait_for_url("**/tokens")
        await page.get_by_label("Name").fill("from the browser")
        await page.get_by_label("Expires").select_option("90d")
        await page.get_by_role("button", name="Create token").click()
        secret = (await page.locator("[data-token-secret]").inner_text()).strip()
        assert secret.startswith("de_")
        await snapshot(page, "tokens")
        assert await _me(client, secret) == 200
        await page.goto("/tokens")
        await expect(page.locator("[data-token-secret]")).to_have_count(0)  # shown once
        await page.get_by_role("button", name="Revoke token from the browser").click()
        await expect(page.get_by_text("was revoked")).to_be_visible()
        await expect(page.locator("tr", has_text="from the browser")).to_contain_text("revoked")
        assert await _me(client, secret) == 401
    finally:
        await ctx.close()

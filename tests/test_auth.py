"""Login end to end against panva's oidc-provider (a certified OpenID Provider) on loopback:
code + PKCE + state + nonce with the claims where that provider puts them by default
(userinfo) or in the id_token; refusals (tampered state, replayed answer or code, another
browser); the user and identity rows, cookie flags, server-side logout; the dev login only in
local mode. The id_token's rejection paths are in test_auth_id_tokens.py; who may sign in
(verified emails, DISPATCH_ALLOWED_EMAILS) in test_auth_who.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from http.cookies import SimpleCookie
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.store import Store
from dispatch_engine.web.sessions import safe_next

from .support.app_client import AppClient, Start
from .support.oidc_provider import OidcPeer, Person, authorize, launch, start_app
from .support.web_session import csrf_of, dev_login

# OIDC Core §5.4 lets a provider put scope claims in the id_token too; oidc-provider does
# when told not to conform, and must when it has no userinfo endpoint.
CLAIMS_IN_ID_TOKEN = {"conformIdTokenClaims": False, "features": {"userinfo": {"enabled": False}}}


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[OidcPeer]:
    async with launch(tmp_path / "oidc-provider.log") as started:
        yield started


@pytest.fixture
async def app(make_client: Start, settings: Settings, peer: OidcPeer) -> AppClient:
    return await start_app(make_client, settings, peer)


async def _authorize(client: AppClient, peer: OidcPeer, login: str = "1001") -> URL:
    """Press "Continue with …" and sign in at the provider; returns the callback URL."""
    page = await (await client.get("/login")).text()
    assert "Continue with 127.0.0.1" in page
    assert "Continue as dev user" not in page, "the dev login must be off when OIDC is set"
    start = await client.post(
        "/auth/oidc/start",
        data={"csrf_token": csrf_of(page), "next": "/campaigns"},
        allow_redirects=False,
    )
    assert start.status == 303, await start.text()
    target = URL(start.headers["Location"])
    assert target.query["code_challenge_method"] == "S256"
    assert target.query["nonce"] and target.query["state"]
    return await authorize(client.session, target, peer.issuer, login)


def _cookie(response: aiohttp.ClientResponse, name: str) -> str | None:
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(name + "="):
            return header
    return None


async def test_login_with_the_providers_default_claims_creates_the_user_and_a_session(
    app: AppClient, store: Store, peer: OidcPeer
) -> None:
    """oidc-provider's default: the id_token has `sub` only, email and name are in userinfo."""
    callback = await _authorize(app, peer)
    assert callback.path == "/auth/oidc/callback"
    response = await app.session.get(callback, allow_redirects=False)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/campaigns"
    cookie = _cookie(response, "de_session")
    assert cookie is not None
    flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= flags
    assert "samesite=lax" in cookie.lower()
    assert "secure" not in flags, "plain http: the browser would drop a Secure cookie"

    page = await app.get("/campaigns")
    html = await page.text()
    assert page.status == 200 and "Ada Lovelace" in html and "ada@example.com" in html
    assert 'src="https://avatars.example.com/ada.png"' in html

    user = await store.pool.fetchrow("SELECT * FROM users WHERE email = 'ada@example.com'")
    assert user is not None and user["name"] == "Ada Lovelace"
    assert user["avatar_url"] == "https://avatars.example.com/ada.png"
    identity = await store.pool.fetchrow("SELECT * FROM identities WHERE user_id = $1", user["id"])
    assert identity is not None
    assert (identity["provider"], identity["subject"]) == (peer.issuer, "1001")
    session = await store.pool.fetchrow("SELECT * FROM sessions WHERE user_id = $1", user["id"])
    assert session is not None
    raw = SimpleCookie(cookie)["de_session"].value
    assert raw.encode() not in bytes(session["token_hash"]) and len(session["token_hash"]) == 32

    # A second sign-in finds the same user through the identity and refreshes name/avatar.
    await peer.set_people(Person(name="Ada King", picture="https://avatars.example.com/ada2.png"))
    app.session.cookie_jar.clear()
    assert (await app.session.get(await _authorize(app, peer))).status == 200
    rows = await store.pool.fetch("SELECT name, avatar_url FROM users")
    assert [tuple(r) for r in rows] == [("Ada King", "https://avatars.example.com/ada2.png")]


async def test_login_with_the_claims_in_the_id_token(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    app = await start_app(make_client, settings, peer, options=CLAIMS_IN_ID_TOKEN)
    meta = await (await app.session.get(peer.issuer + "/.well-known/openid-configuration")).json()
    assert "userinfo_endpoint" not in meta, "the claims can only come from the id_token"
    response = await app.session.get(await _authorize(app, peer))
    assert response.status == 200 and response.url.path == "/campaigns", await response.text()
    assert "Ada Lovelace" in await response.text()
    row = await store.pool.fetchrow("SELECT email, name FROM users")
    assert row is not None and tuple(row) == ("ada@example.com", "Ada Lovelace")


async def test_tampered_state_and_replays_are_refused(
    app: AppClient, store: Store, peer: OidcPeer
) -> None:
    callback = await _authorize(app, peer)
    tampered = callback.update_query(state=callback.query["state"] + "x")
    refused = await app.session.get(tampered, allow_redirects=False)
    assert refused.status == 400
    assert "not valid" in await refused.text()
    assert _cookie(refused, "de_session") is None

    # The tampered answer did not spend the real flow nor the code.
    assert (await app.session.get(callback, allow_redirects=False)).status == 303
    replay = await app.session.get(callback, allow_redirects=False)
    assert replay.status == 400, "a used state must not sign in twice"
    assert _cookie(replay, "de_session") is None

    # A fresh, valid state cannot carry an old code: the provider refuses the code's reuse,
    # and we show why instead of failing.
    app.session.cookie_jar.clear(lambda morsel: morsel.key == "de_session")
    second = await _authorize(app, peer)
    stolen = second.update_query(code=callback.query["code"])
    refused = await app.session.get(stolen, allow_redirects=False)
    assert refused.status == 400
    text = await refused.text()
    assert "did not accept the sign-in code" in text and "invalid_grant" not in text.lower()
    assert _cookie(refused, "de_session") is None
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 1


async def test_a_callback_in_another_browser_is_refused(app: AppClient, peer: OidcPeer) -> None:
    callback = await _authorize(app, peer)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        response = await other.get(callback, allow_redirects=False)
        assert response.status == 400
        assert _cookie(response, "de_session") is None
    assert (await app.session.get(callback, allow_redirects=False)).status == 303


async def test_logout_revokes_the_session_server_side(
    app: AppClient, store: Store, peer: OidcPeer
) -> None:
    await app.session.get(await _authorize(app, peer))
    page = await app.get("/emails")
    assert page.status == 200
    old = app.session.cookie_jar.filter_cookies(app.make_url("/"))["de_session"].value
    assert (await app.get("/api/me")).status == 200

    bye = await app.post("/logout", data={"csrf_token": csrf_of(await page.text())})
    assert bye.url.path == "/login" and "signed out" in await bye.text()
    assert await store.pool.fetchval("SELECT revoked_at IS NOT NULL FROM sessions")

    # The old cookie, replayed by anyone, no longer works.
    async with aiohttp.ClientSession(cookies={"de_session": old}) as thief:
        me = await thief.get(app.make_url("/api/me"))
        assert me.status == 401
        emails = await thief.get(app.make_url("/emails"), allow_redirects=False)
        assert emails.status == 303 and emails.headers["Location"].startswith("/login")


async def test_the_session_cookie_is_secure_behind_https(
    make_client: Start, settings: Settings
) -> None:
    client = await make_client(
        replace(settings, base_url="https://dispatch.example.com"), roles=frozenset({"api"})
    )
    page = await client.get("/login")
    browser = _cookie(page, "de_browser")
    assert browser is not None and "; Secure" in browser
    # A test client on plain http holds back Secure cookies; hand the browser id over.
    response = await client.post(
        "/auth/dev/start",
        data={"csrf_token": csrf_of(await page.text())},
        headers={"Cookie": browser.split(";")[0]},
        allow_redirects=False,
    )
    assert response.status == 303
    cookie = _cookie(response, "de_session")
    assert cookie is not None and "; Secure" in cookie and "HttpOnly" in cookie


async def test_the_dev_login_is_the_dev_user_and_only_in_local_mode(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(roles=frozenset({"api"}))
    await dev_login(client)
    me = await (await client.get("/api/me")).json()
    assert me["email"] == "dev@example.com" and me["name"] == "Dev User"
    assert await store.pool.fetchval("SELECT count(*) FROM senders WHERE owner_id = $1", me["id"])

    google = replace(settings, google_client_id="id", google_client_secret="secret")
    assert not google.local_mode and google.oidc is not None
    assert google.oidc.issuer == "https://accounts.google.com"
    client = await make_client(google, roles=frozenset({"api"}))
    page = await (await client.get("/login")).text()
    assert "Continue with Google" in page and "dev user" not in page
    response = await client.post("/auth/dev/start", data={"csrf_token": csrf_of(page)})
    assert response.status == 404


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GOOGLE_CLIENT_ID": "x"}, "GOOGLE_CLIENT_SECRET must be set too"),
        ({"OIDC_ISSUER": "https://id.example.com", "OIDC_CLIENT_ID": "x"},
         "OIDC_CLIENT_SECRET must be set too"),
        ({"OIDC_ISSUER": "http://id.example.com", "OIDC_CLIENT_ID": "x",
          "OIDC_CLIENT_SECRET": "y"}, "OIDC_ISSUER must be an https:// URL"),
        ({"GOOGLE_CLIENT_ID": "x", "GOOGLE_CLIENT_SECRET": "y", "OIDC_ISSUER": "https://i.io",
          "OIDC_CLIENT_ID": "x", "OIDC_CLIENT_SECRET": "y"}, "not both"),
    ],
)  # fmt: skip
def test_login_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_login_settings_choose_the_provider() -> None:
    assert load_settings({}).local_mode
    oidc = load_settings(
        {"OIDC_ISSUER": "https://id.example.com/", "OIDC_CLIENT_ID": "a", "OIDC_CLIENT_SECRET": "b"}
    ).oidc
    assert oidc is not None and oidc.issuer == "https://id.example.com"
    assert "b" not in repr(oidc), "the client secret must stay out of logs"


@pytest.mark.parametrize(
    ("wanted", "goes_to"),
    [
        ("/campaigns/3?x=1", "/campaigns/3?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_after_login_only_local_paths(wanted: str | None, goes_to: str) -> None:
    assert safe_next(wanted) == goes_to

"""What the sign-in provider answers is checked before anyone signs in: a refusal at the
provider, an answer without a code, a token or userinfo answer that cannot be used, a
discovery document about another issuer. Each is refused with its reason on the login page
(400), and no session is made.

panva's oidc-provider runs its real flow on loopback (tests/oidc_provider.py); where an
answer must be wrong, a small proxy in front of the provider changes that one answer.
"""

from __future__ import annotations

import base64
import html
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from yarl import URL

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    KID,
    OidcPeer,
    Person,
    TokenAnswer,
    TokenInterposer,
    authorize,
    launch,
    start_app,
    start_login,
)
from .support.web_session import csrf_of


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[OidcPeer]:
    async with launch(tmp_path / "oidc-provider.log") as started:
        yield started


@pytest.fixture
async def token_answer(peer: OidcPeer) -> AsyncIterator[TokenAnswer]:
    started = TokenAnswer(peer)
    await started.server.start_server()
    yield started
    await started.server.close()


async def _refused(response: aiohttp.ClientResponse, store: Store, reason: str) -> None:
    text = html.unescape(await response.text())
    assert response.status == 400, text[:2000]
    assert reason in text
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 0


async def _callback(app: AppClient, peer: OidcPeer) -> URL:
    target = await start_login(app.session, app.make_url("/"), "/campaigns")
    return await authorize(app.session, target, peer.issuer, "1001")


async def test_a_person_who_cancels_at_the_provider_is_told_the_providers_reason(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    app = await start_app(make_client, settings, peer)
    target = await start_login(app.session, app.make_url("/"), "/campaigns")
    page = await app.session.get(target)  # the provider's login page, with its Cancel link
    cancel = URL((await page.text()).split('href="', 1)[1].split('"', 1)[0])
    response = await app.session.get(page.url.join(cancel), allow_redirects=False)
    while response.headers.get("Location", "").startswith(peer.issuer + "/"):
        response = await app.session.get(response.headers["Location"], allow_redirects=False)
    callback = URL(response.headers["Location"])
    assert callback.path == "/auth/oidc/callback" and callback.query["error"] == "access_denied"
    answer = await app.session.get(callback, allow_redirects=False)
    await _refused(answer, store, "The sign-in provider refused: End-User aborted interaction")


async def test_an_answer_without_a_code_is_refused(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    app = await start_app(make_client, settings, peer)
    callback = await _callback(app, peer)
    without = callback.with_query({k: v for k, v in callback.query.items() if k != "code"})
    answer = await app.session.get(without, allow_redirects=False)
    await _refused(answer, store, "The sign-in provider sent no authorization code.")


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((200, b"<html>busy</html>"), "token endpoint answered 200 without JSON"),
        ((200, b"[1, 2]"), "token endpoint answered 200 without JSON"),
        ((200, b'{"pad": "' + b"x" * 300_000 + b'"}'), "answered with over 262144 bytes"),
        ((200, b'{"access_token": "a"}'), "did not accept the sign-in code: HTTP 200"),
        ((400, b'{"error": "invalid_client"}'), "did not accept the sign-in code: invalid_client"),
    ],
)
async def test_a_token_answer_that_cannot_be_used_is_refused(
    make_client: Start,
    settings: Settings,
    store: Store,
    peer: OidcPeer,
    token_answer: TokenAnswer,
    answer: tuple[int, bytes],
    reason: str,
) -> None:
    app = await start_app(make_client, settings, peer, token_endpoint=token_answer.url)
    token_answer.rewrite = lambda status, body: answer
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    await _refused(response, store, reason)


async def test_an_access_token_the_userinfo_endpoint_refuses_is_refused_with_its_reason(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer, token_answer: TokenAnswer
) -> None:
    """The provider's real userinfo endpoint answers 401 and says why in WWW-Authenticate."""

    def spoil(status: int, body: bytes) -> tuple[int, bytes]:
        return status, orjson.dumps({**orjson.loads(body), "access_token": "not-a-token"})

    app = await start_app(make_client, settings, peer, token_endpoint=token_answer.url)
    token_answer.rewrite = spoil
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    await _refused(response, store, "userinfo endpoint refused: Bearer")
    assert "invalid_token" in await response.text()


async def test_a_discovery_document_about_another_issuer_is_refused(
    make_client: Start, settings: Settings, peer: OidcPeer
) -> None:
    """The app is told the issuer is a proxy of the provider: the document names the real one."""

    async def discovery(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http, http.get(peer.issuer + request.path) as got:
            return web.Response(body=await got.read(), content_type="application/json")

    proxy_app = web.Application()
    proxy_app.router.add_get("/.well-known/openid-configuration", discovery)
    proxy = TestServer(proxy_app, host="127.0.0.1")
    await proxy.start_server()
    try:
        issuer = str(proxy.make_url("")).rstrip("/")
        oidc = replace(settings, oidc_issuer=issuer, oidc_client_id=CLIENT_ID,
                       oidc_client_secret=CLIENT_SECRET)  # fmt: skip
        app = await make_client(oidc, roles=frozenset({"api"}))
        await peer.configure(str(app.make_url("/auth/oidc/callback")))
        page = await (await app.get("/login")).text()
        start = await app.post("/auth/oidc/start", data={"csrf_token": csrf_of(page)},
                               allow_redirects=False)  # fmt: skip
        text = html.unescape(await start.text())
        assert start.status == 400, text[:2000]
        assert "discovery document names another issuer" in text
    finally:
        await proxy.close()


async def test_a_long_name_is_cut_and_an_address_too_long_to_be_one_is_not_taken(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    person = Person(name="N" * 300, picture="javascript:alert(1)")
    app = await start_app(make_client, settings, peer, person)
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    assert response.status == 303, await response.text()
    row = await store.pool.fetchrow("SELECT name, avatar_url FROM users")
    assert row is not None
    assert (row["name"], row["avatar_url"]) == ("N" * 200, None)

    await peer.set_people(Person(email="a" * 310 + "@example.com"))
    app.session.cookie_jar.clear()
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    assert response.status == 400
    assert await store.pool.fetchval("SELECT count(*) FROM users") == 1


async def test_a_provider_that_takes_the_client_secret_only_in_the_form_signs_in(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer, token_answer: TokenAnswer
) -> None:
    """Discovery offers only `client_secret_post`: the secret goes in the token request's form."""
    post = "client_secret_post"
    post_only = {
        "clientAuthMethods": [post],
        "clientDefaults": {"token_endpoint_auth_method": post},
    }
    app = await start_app(
        make_client, settings, peer, options=post_only, token_endpoint=token_answer.url
    )
    meta = await (await app.session.get(peer.issuer + "/.well-known/openid-configuration")).json()
    assert meta["token_endpoint_auth_methods_supported"] == ["client_secret_post"]
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    assert response.status == 303, html.unescape(await response.text())[:2000]
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 1
    ((headers, form),) = token_answer.requests
    assert "Authorization" not in headers
    assert b"client_secret=" in form and b"client_id=" in form


async def test_an_id_token_for_several_audiences_signs_in_when_it_was_issued_to_us(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    """OIDC Core §2: with several audiences, `azp` names the party it was issued to."""
    interposer = TokenInterposer(peer)
    await interposer.server.start_server()
    try:
        app = await start_app(make_client, settings, peer, token_endpoint=interposer.url)

        def several(real: str) -> str:
            payload = real.split(".")[1]
            claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            claims |= {"aud": [CLIENT_ID, "another-client"], "azp": CLIENT_ID}
            return jwt.encode({"alg": "RS256", "kid": KID}, claims, peer.key)

        interposer.forge = several
        response = await app.session.get(await _callback(app, peer), allow_redirects=False)
        assert interposer.swapped == 1
        assert response.status == 303, html.unescape(await response.text())[:2000]
        assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 1
    finally:
        await interposer.server.close()


async def test_an_id_token_that_names_nobody_is_refused(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    """`sub` is essential (OIDC Core §2): without it the token identifies no one."""
    interposer = TokenInterposer(peer)
    await interposer.server.start_server()
    try:
        app = await start_app(make_client, settings, peer, token_endpoint=interposer.url)

        def nobody(real: str) -> str:
            payload = real.split(".")[1]
            claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            claims.pop("sub")
            return jwt.encode({"alg": "RS256", "kid": KID}, claims, peer.key)

        interposer.forge = nobody
        response = await app.session.get(await _callback(app, peer), allow_redirects=False)
        assert interposer.swapped == 1
        await _refused(response, store, "id_token is not valid")
    finally:
        await interposer.server.close()


async def _signed_in_as(app: AppClient, peer: OidcPeer, store: Store) -> tuple[str, str]:
    """Complete the sign-in; the (email, name) of the user it made."""
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    assert response.status == 303, html.unescape(await response.text())[:2000]
    row = await store.pool.fetchrow("SELECT email, name FROM users")
    assert row is not None
    return row["email"], row["name"]


def _resigned(peer: OidcPeer, token: str, **changes: object) -> str:
    payload = token.split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return jwt.encode({"alg": "RS256", "kid": KID}, {**claims, **changes}, peer.key)


async def test_a_token_answer_of_exactly_the_size_limit_is_read(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer, token_answer: TokenAnswer
) -> None:
    def padded(status: int, body: bytes) -> tuple[int, bytes]:
        answer = orjson.loads(body) | {"pad": ""}
        answer["pad"] = "x" * (256 * 1024 - len(orjson.dumps(answer)))
        assert len(orjson.dumps(answer)) == 256 * 1024
        return status, orjson.dumps(answer)

    app = await start_app(make_client, settings, peer, token_endpoint=token_answer.url)
    token_answer.rewrite = padded
    response = await app.session.get(await _callback(app, peer), allow_redirects=False)
    assert response.status == 303, html.unescape(await response.text())[:2000]


async def test_without_an_access_token_the_id_tokens_claims_are_enough(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer, token_answer: TokenAnswer
) -> None:
    """No access token, so no userinfo to ask: the verified email of the id_token signs in."""

    def id_token_only(status: int, body: bytes) -> tuple[int, bytes]:
        answer = orjson.loads(body)
        answer.pop("access_token")
        answer["id_token"] = _resigned(
            peer, answer["id_token"], email="ada@example.com", email_verified=True
        )
        return status, orjson.dumps(answer)

    app = await start_app(make_client, settings, peer, token_endpoint=token_answer.url)
    token_answer.rewrite = id_token_only
    assert await _signed_in_as(app, peer, store) == ("ada@example.com", "")


async def test_an_avatar_address_of_2000_characters_or_more_is_not_kept(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    base = "https://avatars.example.com/"
    app = await start_app(make_client, settings, peer)
    for length, kept in ((2000, False), (1999, True)):
        picture = base + "a" * (length - len(base))
        await peer.set_people(Person(picture=picture))
        app.session.cookie_jar.clear()
        response = await app.session.get(await _callback(app, peer), allow_redirects=False)
        assert response.status == 303, html.unescape(await response.text())[:2000]
        avatar = await store.pool.fetchval("SELECT avatar_url FROM users")
        assert avatar == (picture if kept else None), length


@pytest.mark.parametrize(
    "key_set",
    [
        {"keys": [{"kty": "RSA", "kid": KID}]},  # no modulus
        {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]},  # off the curve
        {"no": "keys"},
        {"keys": None},
    ],
)
async def test_a_key_set_that_cannot_be_used_is_refused_with_its_reason(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer, key_set: object
) -> None:
    """A proxy serves the provider's discovery document (naming itself the issuer) with a
    key set of its own; every other endpoint is the provider's."""
    proxy_app = web.Application()
    proxy = TestServer(proxy_app, host="127.0.0.1")

    async def discovery(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http, http.get(peer.issuer + request.path) as got:
            doc = await got.json()
        here = str(proxy.make_url("")).rstrip("/")
        return web.json_response(doc | {"issuer": here, "jwks_uri": here + "/jwks"})

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(key_set)

    proxy_app.router.add_get("/.well-known/openid-configuration", discovery)
    proxy_app.router.add_get("/jwks", jwks)
    await proxy.start_server()
    try:
        issuer = str(proxy.make_url("")).rstrip("/")
        oidc = replace(settings, oidc_issuer=issuer, oidc_client_id=CLIENT_ID,
                       oidc_client_secret=CLIENT_SECRET)  # fmt: skip
        app = await make_client(oidc, roles=frozenset({"api"}))
        await peer.configure(str(app.make_url("/auth/oidc/callback")))
        response = await app.session.get(await _callback(app, peer), allow_redirects=False)
        await _refused(response, store, "the sign-in provider's key set is unusable")
    finally:
        await proxy.close()


async def test_the_id_tokens_stated_email_wins_and_userinfo_adds_the_missing_name(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer, token_answer: TokenAnswer
) -> None:
    """The id_token states a verified email but no name: userinfo is asked for the name, and
    its own (other) email does not replace the one the id_token stated."""

    def email_only(status: int, body: bytes) -> tuple[int, bytes]:
        answer = orjson.loads(body)
        answer["id_token"] = _resigned(
            peer, answer["id_token"], email="ada@id.example.com", email_verified=True
        )
        return status, orjson.dumps(answer)

    app = await start_app(make_client, settings, peer, token_endpoint=token_answer.url)
    token_answer.rewrite = email_only
    assert await _signed_in_as(app, peer, store) == ("ada@id.example.com", "Ada Lovelace")


async def test_an_id_token_naming_google_from_another_provider_is_refused(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    """Only Google's own tokens may name the issuer `accounts.google.com` (without scheme)."""
    interposer = TokenInterposer(peer)
    await interposer.server.start_server()
    try:
        app = await start_app(make_client, settings, peer, token_endpoint=interposer.url)
        interposer.forge = lambda real: _resigned(peer, real, iss="accounts.google.com")
        response = await app.session.get(await _callback(app, peer), allow_redirects=False)
        assert interposer.swapped == 1
        await _refused(response, store, "id_token is not valid")
    finally:
        await interposer.server.close()


@pytest.mark.parametrize("missing", ["authorization_endpoint", "token_endpoint", "jwks_uri"])
async def test_a_discovery_document_without_an_endpoint_is_refused(
    make_client: Start, settings: Settings, peer: OidcPeer, missing: str
) -> None:
    proxy_app = web.Application()
    proxy = TestServer(proxy_app, host="127.0.0.1")

    async def discovery(request: web.Request) -> web.Response:
        async with aiohttp.ClientSession() as http, http.get(peer.issuer + request.path) as got:
            doc = await got.json()
        doc.pop(missing)
        return web.json_response(doc | {"issuer": str(proxy.make_url("")).rstrip("/")})

    proxy_app.router.add_get("/.well-known/openid-configuration", discovery)
    await proxy.start_server()
    try:
        issuer = str(proxy.make_url("")).rstrip("/")
        oidc = replace(settings, oidc_issuer=issuer, oidc_client_id=CLIENT_ID,
                       oidc_client_secret=CLIENT_SECRET)  # fmt: skip
        app = await make_client(oidc, roles=frozenset({"api"}))
        await peer.configure(str(app.make_url("/auth/oidc/callback")))
        page = await (await app.get("/login")).text()
        start = await app.post("/auth/oidc/start", data={"csrf_token": csrf_of(page)},
                               allow_redirects=False)  # fmt: skip
        text = html.unescape(await start.text())
        assert start.status == 400, text[:2000]
        assert f"discovery document lacks {missing}" in text
    finally:
        await proxy.close()

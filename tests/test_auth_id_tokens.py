"""Every way an id_token can be wrong is refused, with panva's oidc-provider on loopback.

The provider runs its real flow (login, consent, code, token endpoint, JWKS, userinfo); a
`TokenInterposer` between the app and its token endpoint swaps the id_token it issued for
one forged from it: expired, another issuer or audience, `alg: none`, HS256 keyed by the
client secret, a broken signature, an unknown key, another nonce or subject. Forgeries are
signed with the provider's own key (the test made it), so each is refused for its one defect;
the control case (the same claims re-signed) signs in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from yarl import URL

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.oidc_provider import (
    CLIENT_ID,
    CLIENT_SECRET,
    KID,
    OTHER_CLIENT_ID,
    OTHER_CLIENT_SECRET,
    OTHER_REDIRECT_URI,
    OidcPeer,
    TokenInterposer,
    authorize,
    launch,
    start_app,
    start_login,
)

Claims = dict[str, Any]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(token: str) -> Claims:
    payload = token.split(".")[1]
    claims: Claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _unsigned(header: Claims, claims: Claims) -> str:
    return f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"


def _hs256(claims: Claims) -> str:
    signing_input = _unsigned({"alg": "HS256", "kid": KID, "typ": "JWT"}, claims)
    mac = hmac.new(CLIENT_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _bad_signature(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{_b64(bytes(raw))}"


def _case(peer: OidcPeer, name: str, real: str) -> str:
    """The forged id_token `name` made from the provider's `real` one."""
    claims, now = _claims(real), int(time.time())

    def signed(changes: Claims, key: RSAKey = peer.key) -> str:
        header = {"alg": "RS256", "kid": key.kid}
        return jwt.encode(header, {**claims, **changes}, key)

    match name:
        case "re-signed":
            return signed({})
        case "expired 10 minutes ago":
            return signed({"iat": now - 1200, "exp": now - 600})
        case "another issuer":
            return signed({"iss": "https://id.example.com"})
        case "another audience":
            return signed({"aud": "another-client"})
        case "two audiences, no azp":
            return signed({"aud": [CLIENT_ID, "another-client"]})
        case "alg none":
            return _unsigned({"alg": "none", "typ": "JWT"}, claims) + "."
        case "HS256 with the client secret":
            return _hs256(claims)
        case "a bad signature":
            return _bad_signature(real)
        case "an unknown kid":
            return signed({}, RSAKey.generate_key(2048, {"kid": "rotated-away"}))
        case "another nonce":
            return signed({"nonce": "not-the-nonce"})
        case "another subject than userinfo's":
            return signed({"sub": "someone-else"})
    raise AssertionError(name)


REFUSED = {
    "expired 10 minutes ago": "id_token is not valid",
    "another issuer": "id_token is not valid",
    "another audience": "id_token is not valid",
    "two audiences, no azp": "azp mismatch",
    "alg none": "id_token is not valid",
    "HS256 with the client secret": "id_token is not valid",
    "a bad signature": "id_token is not valid",
    "an unknown kid": "id_token is not valid",
    "another nonce": "nonce mismatch",
    "another subject than userinfo's": "userinfo answer is about another user",
}


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[OidcPeer]:
    async with launch(tmp_path / "oidc-provider.log") as started:
        yield started


@pytest.fixture
async def interposer(peer: OidcPeer) -> AsyncIterator[TokenInterposer]:
    started = TokenInterposer(peer)
    await started.server.start_server()
    yield started
    await started.server.close()


async def _sign_in_with(
    make_client: Start, settings: Settings, peer: OidcPeer, interposer: TokenInterposer, case: str
) -> tuple[int, str]:
    app = await start_app(make_client, settings, peer, token_endpoint=interposer.url)
    interposer.forge = lambda real: _case(peer, case, real)
    target = await start_login(app.session, app.make_url("/"), "/campaigns")
    callback = await authorize(app.session, target, peer.issuer, "1001")
    response = await app.session.get(callback, allow_redirects=False)
    assert interposer.swapped == 1, "the forged id_token must be the one the app got"
    return response.status, await response.text()


async def test_the_same_claims_re_signed_with_the_providers_key_sign_in(
    make_client: Start, settings: Settings, peer: OidcPeer, interposer: TokenInterposer
) -> None:
    """The control: the interposer alone breaks nothing, so each refusal below is its defect."""
    status, text = await _sign_in_with(make_client, settings, peer, interposer, "re-signed")
    assert status == 303, text


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_a_forged_id_token_is_refused(
    make_client: Start,
    settings: Settings,
    store: Store,
    peer: OidcPeer,
    interposer: TokenInterposer,
    case: str,
) -> None:
    status, text = await _sign_in_with(make_client, settings, peer, interposer, case)
    assert status == 400, text
    assert REFUSED[case] in text
    assert await store.pool.fetchval("SELECT count(*) FROM users") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 0


async def _other_applications_id_token(
    browser: aiohttp.ClientSession, peer: OidcPeer, nonce: str
) -> str:
    """A genuine id_token the provider issues to another client, for this person and nonce."""
    verifier = "v" * 64
    challenge = _b64(hashlib.sha256(verifier.encode()).digest())
    target = URL(peer.issuer + "/auth").with_query(
        client_id=OTHER_CLIENT_ID, response_type="code", scope="openid email",
        redirect_uri=OTHER_REDIRECT_URI, state="s", nonce=nonce,
        code_challenge=challenge, code_challenge_method="S256",
    )  # fmt: skip
    back = await authorize(browser, target, peer.issuer, "1001")
    form = {"grant_type": "authorization_code", "code": back.query["code"],
            "redirect_uri": OTHER_REDIRECT_URI, "code_verifier": verifier}  # fmt: skip
    pair = base64.b64encode(f"{OTHER_CLIENT_ID}:{OTHER_CLIENT_SECRET}".encode()).decode()
    headers = {"Authorization": f"Basic {pair}"}
    async with browser.post(peer.issuer + "/token", data=form, headers=headers) as answer:
        body = await answer.json()
    assert answer.status == 200, body
    token: str = body["id_token"]
    assert _claims(token)["aud"] == OTHER_CLIENT_ID and _claims(token)["nonce"] == nonce
    return token


async def test_an_id_token_the_provider_issued_to_another_application_is_refused(
    make_client: Start,
    settings: Settings,
    store: Store,
    peer: OidcPeer,
    interposer: TokenInterposer,
) -> None:
    """Token substitution with no forgery at all: same provider, person and nonce; not ours."""
    app = await start_app(make_client, settings, peer, token_endpoint=interposer.url)
    target = await start_login(app.session, app.make_url("/"), "/campaigns")
    other = await _other_applications_id_token(app.session, peer, target.query["nonce"])
    interposer.forge = lambda real: other
    callback = await authorize(app.session, target, peer.issuer, "1001")
    response = await app.session.get(callback, allow_redirects=False)
    assert interposer.swapped == 1
    assert response.status == 400
    assert "id_token is not valid" in await response.text()
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 0


async def test_an_unverified_id_token_email_is_never_paired_with_userinfos_verification(
    make_client: Start,
    settings: Settings,
    store: Store,
    peer: OidcPeer,
    interposer: TokenInterposer,
) -> None:
    """email and email_verified are one statement: the id_token names an address without
    saying it is verified, userinfo verifies another; the verified one is who signs in."""
    app = await start_app(make_client, settings, peer, token_endpoint=interposer.url)
    interposer.forge = lambda real: jwt.encode(
        {"alg": "RS256", "kid": KID}, {**_claims(real), "email": "mallory@example.com"}, peer.key
    )
    target = await start_login(app.session, app.make_url("/"), "/campaigns")
    callback = await authorize(app.session, target, peer.issuer, "1001")
    response = await app.session.get(callback, allow_redirects=False)
    assert response.status == 303, await response.text()
    emails = [row["email"] for row in await store.pool.fetch("SELECT email FROM users")]
    assert emails == ["ada@example.com"]

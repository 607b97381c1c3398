"""A small OpenID Connect provider on loopback, for testing the login end to end.

It serves discovery, authorize (auto-approves and redirects back with code + state), token
(checks the client secret, the redirect URI, the PKCE verifier, and that a code is used
once) and JWKS, and signs id_tokens with a test RSA key (joserfc). Knobs let a test change
who signs in next or break the nonce.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import RSAKey
from yarl import URL

CLIENT_ID = "dispatch-test-client"
CLIENT_SECRET = "s3cret/with:odd chars"


@dataclass
class Person:
    sub: str = "1001"
    email: str = "ada@example.com"
    email_verified: bool = True
    name: str = "Ada Lovelace"
    picture: str | None = "https://avatars.example.com/ada.png"


@dataclass
class OidcProvider:
    person: Person = field(default_factory=Person)
    wrong_nonce: bool = False
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "test-1"}))
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_errors: list[str] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def issuer(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/jwks", self.jwks)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": self.issuer + "/authorize",
                "token_endpoint": self.issuer + "/token",
                "jwks_uri": self.issuer + "/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.key.as_dict(private=False)]})

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            raise web.HTTPBadRequest(text="unknown client or response type")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            raise web.HTTPBadRequest(text="PKCE (S256) is required")
        if "openid" not in q.get("scope", "").split():
            raise web.HTTPBadRequest(text="scope must include openid")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": q["redirect_uri"],
            "challenge": q["code_challenge"],
            "nonce": q.get("nonce"),
            "person": self.person,
            "used": False,
        }
        target = URL(q["redirect_uri"]).update_query(code=code, state=q.get("state", ""))
        raise web.HTTPFound(target)

    def _refuse(self, error: str, description: str) -> web.Response:
        self.token_errors.append(error)
        return web.json_response({"error": error, "error_description": description}, status=400)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return self._refuse("invalid_client", "client_secret_basic expected")
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        if unquote(user) != CLIENT_ID or unquote(password) != CLIENT_SECRET:
            return self._refuse("invalid_client", "bad client credentials")
        grant = self.codes.get(str(form.get("code")))
        if form.get("grant_type") != "authorization_code" or grant is None:
            return self._refuse("invalid_grant", "unknown code")
        if grant["used"]:
            return self._refuse("invalid_grant", "this code was already used")
        grant["used"] = True
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return self._refuse("invalid_grant", "redirect_uri differs")
        verifier = str(form.get("code_verifier", ""))
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).decode().rstrip("=") != grant["challenge"]:
            return self._refuse("invalid_grant", "PKCE verifier does not match")
        person: Person = grant["person"]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": person.sub,
            "iat": now,
            "exp": now + 300,
            "nonce": "not-the-nonce" if self.wrong_nonce else grant["nonce"],
            "email": person.email,
            "email_verified": person.email_verified,
            "name": person.name,
        }
        if person.picture:
            claims["picture"] = person.picture
        id_token = jwt.encode({"alg": "RS256", "kid": "test-1"}, claims, self.key)
        return web.json_response(
            {
                "access_token": secrets.token_urlsafe(16),
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": id_token,
            }
        )


async def start_provider() -> OidcProvider:
    provider = OidcProvider()
    provider.server = TestServer(provider.app(), host="127.0.0.1")
    await provider.server.start_server()
    return provider

"""Google sign-in, or any OpenID Connect provider: authorization code + PKCE + state + nonce.

Configured by GOOGLE_CLIENT_ID + GOOGLE_CLIENT_SECRET (issuer https://accounts.google.com) or
OIDC_ISSUER + OIDC_CLIENT_ID + OIDC_CLIENT_SECRET. The endpoints come from the issuer's
discovery document; the id_token's signature is checked against the issuer's JWKS (joserfc),
then its issuer, audience, expiry and nonce. `email`, `email_verified` and `name` come from
the id_token, else from the userinfo endpoint (OIDC Core §5.3, §5.4: with the code flow many
providers put scope claims only there), whose `sub` must be the id_token's. The redirect URI
to register with the provider is `<DISPATCH_BASE_URL>/auth/oidc/callback`.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from yarl import URL

from dispatch_engine.plugin import (
    GOOGLE_ISSUER,
    AuthContext,
    AuthError,
    AuthProviderSpec,
    LoginIdentity,
    OidcClient,
    Settings,
    hookimpl,
)

METADATA_TTL_S = 3600
LEEWAY_S = 120  # clock skew tolerated with the provider: a token expired 10 minutes ago fails
MAX_BODY = 256 * 1024  # a provider's JSON answers are a few KiB; more is refused, not buffered
# Asymmetric algorithms only: "none" and HMAC (keyed by the client secret) are refused.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
SCOPE = "openid email profile"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def _json(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    raw = b""
    async for chunk in response.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > MAX_BODY:
            raise AuthError(f"the sign-in provider's {what} answered with over {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise AuthError(f"the sign-in provider's {what} answered {response.status} without JSON")
    return body


class OidcProvider:
    def __init__(self, client: OidcClient) -> None:
        self.client = client
        google = client.issuer == GOOGLE_ISSUER
        self.label = (
            "Continue with Google" if google else f"Continue with {URL(client.issuer).host}"
        )
        # Google's id_tokens may name the issuer without the scheme.
        self.issuers = [client.issuer, "accounts.google.com"] if google else [client.issuer]
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None

    async def metadata(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        if self._metadata is None or time.monotonic() - self._metadata_at > METADATA_TTL_S:
            url = self.client.issuer + "/.well-known/openid-configuration"
            async with http.get(url) as response:
                doc = await _json(response, "discovery document")
            if doc.get("issuer") != self.client.issuer:
                raise AuthError("the sign-in provider's discovery document names another issuer")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(doc.get(name), str):
                    raise AuthError(f"the sign-in provider's discovery document lacks {name}")
            self._metadata, self._metadata_at, self._keys = doc, time.monotonic(), None
        return self._metadata

    async def keys(self, http: aiohttp.ClientSession, *, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            meta = await self.metadata(http)
            async with http.get(meta["jwks_uri"]) as response:
                body = await _json(response, "key set")
            try:
                self._keys = KeySet.import_key_set(body)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise AuthError(f"the sign-in provider's key set is unusable: {exc}") from None
        return self._keys

    # ---- the two legs ----

    async def start(self, request: web.Request, context: AuthContext) -> web.StreamResponse:
        meta = await self.metadata(context.http)
        verifier = secrets.token_urlsafe(64)
        nonce = secrets.token_urlsafe(24)
        state = await context.flows.start({"verifier": verifier, "nonce": nonce})
        params = {
            "response_type": "code",
            "client_id": self.client.client_id,
            "redirect_uri": context.callback_url,
            "scope": SCOPE,
            "state": state,
            "nonce": nonce,
            "code_challenge": _b64(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256",
        }
        target = URL(meta["authorization_endpoint"]).update_query(params)
        return web.Response(status=303, headers={"Location": str(target)})

    async def callback(self, request: web.Request, context: AuthContext) -> LoginIdentity:
        query = request.query
        flow = await context.flows.take(query.get("state", ""))
        if flow is None:
            raise AuthError(
                "This sign-in answer is not valid: it was already used, it expired, or it "
                "belongs to a sign-in started elsewhere. Please sign in again."
            )
        if "error" in query:
            reason = query.get("error_description") or query["error"]
            raise AuthError(f"The sign-in provider refused: {reason}")
        code = query.get("code")
        if not code:
            raise AuthError("The sign-in provider sent no authorization code.")
        tokens = await self._exchange(context, code, flow["verifier"])
        claims = await self._verify(context.http, tokens, flow["nonce"])
        extra: dict[str, Any] = {}
        if not (_states_email(claims) and claims.get("name")):
            extra = await self._userinfo(context.http, tokens, str(claims["sub"]))
        # email and email_verified are one statement: both come from the same source.
        mail = claims if _states_email(claims) or not extra.get("email") else extra
        return LoginIdentity(
            provider=self.client.issuer,
            subject=str(claims["sub"]),
            email=_text(mail.get("email"), 320, cut=False),
            email_verified=mail.get("email_verified") in (True, "true"),
            name=_text(claims.get("name") or extra.get("name"), 200),
            avatar_url=_https_url(claims.get("picture") or extra.get("picture")),
        )

    async def _userinfo(
        self, http: aiohttp.ClientSession, tokens: dict[str, Any], subject: str
    ) -> dict[str, Any]:
        """The userinfo endpoint's claims (OIDC Core §5.3); {} when the provider has none."""
        endpoint = (await self.metadata(http)).get("userinfo_endpoint")
        access_token = tokens.get("access_token")
        if not isinstance(endpoint, str) or not isinstance(access_token, str):
            return {}
        headers = {"Authorization": f"Bearer {access_token}"}
        async with http.get(endpoint, headers=headers) as response:
            if response.status != 200:
                # RFC 6750 §3: the reason is in WWW-Authenticate; the body may be empty.
                reason = response.headers.get("WWW-Authenticate") or f"HTTP {response.status}"
                raise AuthError(f"The sign-in provider's userinfo endpoint refused: {reason[:300]}")
            if response.content_type == "application/jwt":
                raise AuthError(
                    "The sign-in provider's userinfo answer is a JWT, which is not supported: "
                    "register the client for plain JSON userinfo."
                )
            body = await _json(response, "userinfo endpoint")
        # §5.3.2: a userinfo answer about someone else must not be used (token substitution).
        if body.get("sub") != subject:
            raise AuthError("The sign-in provider's userinfo answer is about another user.")
        return body

    async def _exchange(self, context: AuthContext, code: str, verifier: str) -> dict[str, Any]:
        meta = await self.metadata(context.http)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": context.callback_url,
            "code_verifier": verifier,
        }
        headers: dict[str, str] = {}
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            # RFC 6749 §2.3.1: id and secret are form-encoded before the Basic encoding.
            user, secret = (
                quote(v, safe="") for v in (self.client.client_id, self.client.client_secret)
            )
            pair = f"{user}:{secret}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form |= {"client_id": self.client.client_id,
                     "client_secret": self.client.client_secret}  # fmt: skip
        async with context.http.post(
            meta["token_endpoint"], data=form, headers=headers
        ) as response:
            body = await _json(response, "token endpoint")
        if response.status != 200 or not isinstance(body.get("id_token"), str):
            reason = body.get("error_description") or body.get("error") or f"HTTP {response.status}"
            raise AuthError(f"The sign-in provider did not accept the sign-in code: {reason}")
        return body

    async def _verify(
        self, http: aiohttp.ClientSession, tokens: dict[str, Any], nonce: str
    ) -> dict[str, Any]:
        meta = await self.metadata(http)
        offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in offered if a in ALGORITHMS]
        try:
            try:
                token = jwt.decode(tokens["id_token"], await self.keys(http), algorithms)
            except InvalidKeyIdError:  # the provider rotated its keys
                token = jwt.decode(tokens["id_token"], await self.keys(http, refresh=True),
                                   algorithms)  # fmt: skip
            claims: dict[str, Any] = token.claims
            jwt.JWTClaimsRegistry(
                leeway=LEEWAY_S,
                iss={"essential": True, "values": self.issuers},
                aud={"essential": True, "value": self.client.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
            ).validate(claims)
        except JoseError as exc:
            raise AuthError(f"The sign-in provider's id_token is not valid ({exc}).") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise AuthError("The id_token was not issued for this sign-in (nonce mismatch).")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client.client_id:
            raise AuthError("The id_token was issued to another application (azp mismatch).")
        return claims


def _states_email(claims: dict[str, Any]) -> bool:
    return bool(claims.get("email")) and "email_verified" in claims


def _text(value: Any, limit: int, *, cut: bool = True) -> str:
    """A claim as text of at most `limit` characters: cut, or "" when it may not be cut."""
    if not isinstance(value, str) or (len(value) > limit and not cut):
        return ""
    return value[:limit]


def _https_url(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) < 2000:
        return value
    return None


@hookimpl(trylast=True)
def register_auth_providers(settings: Settings) -> list[AuthProviderSpec]:
    client = settings.oidc
    if client is None:
        return []
    provider = OidcProvider(client)
    return [AuthProviderSpec("oidc", provider.label, provider.start, provider.callback,
                             description=f"OpenID Connect: {client.issuer}")]  # fmt: skip

"""panva's `oidc-provider` (a certified OpenID Provider, npm) on loopback, for the login tests.

`tests/peers/oidc_provider.mjs` runs it in its default configuration: its own login and
consent pages (devInteractions; the login name typed there is the account's `sub`) and the
code flow with scope claims only in userinfo. A test chooses the people (`set_people`),
the client's redirect URI (the app's callback, known once the app runs) and extra Provider
options. The provider signs with an RSA key the test makes (`OidcPeer.key`), so a test can
forge id_tokens signed with the provider's real key.

`TokenInterposer` sits between the app and the provider's real token endpoint (the
discovery document names it instead) and swaps the id_token the provider issued for one the
test forges from it; everything else the app sees comes from the real provider.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from joserfc.jwk import RSAKey
from yarl import URL

from dispatch_engine.config import Settings

from .app_client import AppClient, Start
from .web_session import csrf_of

CLIENT_ID = "dispatch-test-client"
CLIENT_SECRET = "s3cret/with:odd chars"
OTHER_CLIENT_ID = "another-application"
OTHER_CLIENT_SECRET = "another-secret"
OTHER_REDIRECT_URI = "http://127.0.0.1:9/callback"  # never opened: the code is read from it
PEERS = Path(__file__).parents[1] / "peers"
LAUNCHER = PEERS / "oidc_provider.mjs"
KID = "test-key-1"
_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')
_PROMPT = re.compile(r'name="prompt" value="(\w+)"')


@dataclass(frozen=True)
class Person:
    sub: str = "1001"
    email: str | None = "ada@example.com"
    email_verified: bool | None = True  # None: the provider does not say
    name: str | None = "Ada Lovelace"
    picture: str | None = "https://avatars.example.com/ada.png"

    def claims(self) -> dict[str, Any]:
        values = {"email": self.email, "email_verified": self.email_verified,
                  "name": self.name, "picture": self.picture}  # fmt: skip
        return {k: v for k, v in values.items() if v is not None}


class OidcPeer:
    """The running provider process; `issuer` is known at once, `configure` makes it serve."""

    def __init__(self, process: asyncio.subprocess.Process, issuer: str, log: Path) -> None:
        self.process = process
        self.issuer = issuer
        self.log = log
        self.key = RSAKey.generate_key(2048, {"kid": KID, "alg": "RS256", "use": "sig"})

    async def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(message) + b"\n")
        await self.process.stdin.drain()
        return await _read(self.process, self.log)

    async def configure(
        self,
        redirect_uri: str,
        *people: Person,
        options: dict[str, Any] | None = None,
        token_endpoint: str | None = None,
    ) -> None:
        clients = [
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
             "redirect_uris": [redirect_uri]},
            # Another application registered with the same provider (its tokens are not ours).
            {"client_id": OTHER_CLIENT_ID, "client_secret": OTHER_CLIENT_SECRET,
             "redirect_uris": [OTHER_REDIRECT_URI]},
        ]  # fmt: skip
        answer = await self._send({
            "clients": clients,
            "jwks": {"keys": [self.key.as_dict(private=True)]},
            "accounts": {p.sub: p.claims() for p in people or (Person(),)},
            "options": options or {},
            "tokenEndpoint": token_endpoint,
        })  # fmt: skip
        assert answer == {"ready": self.issuer}, answer

    async def set_people(self, *people: Person) -> None:
        answer = await self._send({"accounts": {p.sub: p.claims() for p in people}})
        assert answer == {"ok": len(people)}, answer


async def _read(process: asyncio.subprocess.Process, log: Path) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    if not line:
        raise RuntimeError(f"oidc-provider exited; its output is in {log}")
    answer: dict[str, Any] = orjson.loads(line)
    return answer


@asynccontextmanager
async def launch(log: Path) -> AsyncIterator[OidcPeer]:
    """Start the provider on a free loopback port; stopped (and waited for) on exit."""
    node = shutil.which("node")
    assert node, "node is needed for the oidc-provider peer"
    assert (PEERS / "node_modules" / "oidc-provider").is_dir(), (
        "run `make tests/peers/node_modules/.package-lock.json` (make test does it)"
    )
    with log.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            node, str(LAUNCHER), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=errors,
        )  # fmt: skip
    try:
        listening = await _read(process, log)
        yield OidcPeer(process, listening["listening"], log)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def authorize(
    session: aiohttp.ClientSession, authorize_url: URL | str, issuer: str, login: str
) -> URL:
    """Be the person in the browser: follow the provider's pages, sign in as `login`, consent.

    Returns the first URL outside the provider it redirects to (the app's callback).
    """
    response = await session.get(authorize_url, allow_redirects=False)
    for _ in range(12):
        if response.status in (302, 303):
            target = response.url.join(URL(response.headers["Location"]))
            if not str(target).startswith(issuer + "/"):
                return target
            response = await session.get(target, allow_redirects=False)
            continue
        page = await response.text()
        action, prompt = _ACTION.search(page), _PROMPT.search(page)
        assert response.status == 200 and action and prompt, (response.status, page[:2000])
        form = {"prompt": prompt.group(1)}
        if prompt.group(1) == "login":
            form |= {"login": login, "password": "any"}
        target = response.url.join(URL(action.group(1)))
        response = await session.post(target, data=form, allow_redirects=False)
    raise AssertionError("the provider never redirected back to the app")


Rewrite = Callable[[int, bytes], tuple[int, bytes]]  # (status, body) -> (status, body)
Forge = Callable[[str], str]


class TokenAnswer:
    """In front of the provider's token endpoint: forwards the request, rewrites the answer."""

    def __init__(self, peer: OidcPeer) -> None:
        self.peer = peer
        self.rewrite: Rewrite = lambda status, body: (status, body)
        self.requests: list[tuple[dict[str, str], bytes]] = []  # (headers, form) as sent
        self.server = TestServer(self._app(), host="127.0.0.1")

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        return app

    @property
    def url(self) -> str:
        return str(self.server.make_url("/token"))

    async def _token(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type")}  # fmt: skip
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                self.peer.issuer + "/token", data=await request.read(), headers=headers
            ) as answer,
        ):
            status, body = self.rewrite(answer.status, await answer.read())
        return web.Response(status=status, body=body, content_type="application/json")


class TokenInterposer(TokenAnswer):
    """A `TokenAnswer` that swaps in a forged id_token (when `forge` is set) on a 200."""

    def __init__(self, peer: OidcPeer) -> None:
        super().__init__(peer)
        self.forge: Forge | None = None
        self.swapped = 0
        self.rewrite = self._swap

    def _swap(self, status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200 or self.forge is None:
            return status, body
        answer = orjson.loads(body)
        answer["id_token"] = self.forge(answer["id_token"])
        self.swapped += 1
        return status, orjson.dumps(answer)


async def start_app(
    make_client: Start,
    settings: Settings,
    peer: OidcPeer,
    *people: Person,
    options: dict[str, Any] | None = None,
    token_endpoint: str | None = None,
    roles: frozenset[str] = frozenset({"api"}),
    **changes: Any,
) -> AppClient:
    """The app signed in to through `peer`, which then learns the app's callback URL."""
    oidc = replace(settings, oidc_issuer=peer.issuer, oidc_client_id=CLIENT_ID,
                   oidc_client_secret=CLIENT_SECRET, **changes)  # fmt: skip
    client = await make_client(oidc, roles=roles)
    callback = str(client.make_url("/auth/oidc/callback"))
    await peer.configure(callback, *people, options=options, token_endpoint=token_endpoint)
    return client


async def start_login(session: aiohttp.ClientSession, app: URL, next_path: str) -> URL:
    """Press "Continue with …" on the login page; returns the provider's authorize URL."""
    page = await (await session.get(app.join(URL("/login")))).text()
    start = await session.post(app.join(URL("/auth/oidc/start")), allow_redirects=False,
                               data={"csrf_token": csrf_of(page), "next": next_path})  # fmt: skip
    assert start.status == 303, await start.text()
    return URL(start.headers["Location"])

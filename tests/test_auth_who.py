"""Who may sign in: only verified emails, and only those DISPATCH_ALLOWED_EMAILS permits when
it is set (addresses and @domain entries, IDN domains in either form); leaving it unset where
anyone can reach the login says so loudly at start. Against panva's oidc-provider."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.oidc_provider import OidcPeer, Person, authorize, launch, start_app, start_login

ALLOWED = "Boss@Example.com, @Bücher.example"
WARNING = "DISPATCH_ALLOWED_EMAILS is not set"


@pytest.fixture
async def peer(tmp_path: Path) -> AsyncIterator[OidcPeer]:
    async with launch(tmp_path / "oidc-provider.log") as started:
        yield started


async def _sign_in(app: AppClient, peer: OidcPeer, person: Person) -> tuple[int, str]:
    """A fresh browser signs in as `person`: (status of the callback, its page)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        target = await start_login(browser, app.make_url("/"), "/campaigns")
        callback = await authorize(browser, target, peer.issuer, person.sub)
        response = await browser.get(callback, allow_redirects=False)
        return response.status, await response.text()


@pytest.mark.parametrize("existing", [False, True], ids=["new user", "existing user"])
@pytest.mark.parametrize("verified", [False, None], ids=["false", "missing"])
async def test_an_unverified_email_neither_creates_nor_enters_an_account(
    make_client: Start,
    settings: Settings,
    store: Store,
    peer: OidcPeer,
    existing: bool,
    verified: bool | None,
) -> None:
    if existing:
        await store.ensure_user("ada@example.com", "The real Ada")
    person = Person(sub="evil", email_verified=verified)
    app = await start_app(make_client, settings, peer, person)
    status, page = await _sign_in(app, peer, person)
    assert status == 400
    assert "ada@example.com is not verified" in page
    assert await store.pool.fetchval("SELECT count(*) FROM users") == int(existing)
    assert await store.pool.fetchval("SELECT count(*) FROM identities") == 0
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 0


async def test_only_allowed_addresses_and_domains_sign_in(
    make_client: Start, settings: Settings, store: Store, peer: OidcPeer
) -> None:
    people = {
        "boss": Person(sub="boss", email="boss@example.com"),
        "idn": Person(sub="idn", email="ada@bücher.example"),
        "a-label": Person(sub="a-label", email="bob@XN--BCHER-KVA.example"),
        "mallory": Person(sub="mallory", email="mallory@example.com"),
        "sub": Person(sub="sub", email="eve@mail.bücher.example"),
        "lookalike": Person(sub="lookalike", email="boss@example.com.evil.example"),
    }
    allowed = load_settings({"DISPATCH_ALLOWED_EMAILS": ALLOWED}).allowed_emails
    app = await start_app(make_client, settings, peer, *people.values(), allowed_emails=allowed)
    outcomes = {name: (await _sign_in(app, peer, person))[0] for name, person in people.items()}
    assert outcomes == {"boss": 303, "idn": 303, "a-label": 303,
                        "mallory": 400, "sub": 400, "lookalike": 400}  # fmt: skip
    _, page = await _sign_in(app, peer, people["mallory"])
    assert "mallory@example.com may not sign in here" in page
    emails = await store.pool.fetch("SELECT email FROM users ORDER BY email")
    assert len(emails) == 3, "only the allowed people have an account"
    assert await store.pool.fetchval("SELECT count(*) FROM sessions") == 3


async def test_anyone_may_sign_in_when_the_list_says_star(
    make_client: Start, settings: Settings, peer: OidcPeer
) -> None:
    anyone = load_settings({"DISPATCH_ALLOWED_EMAILS": "*"}).allowed_emails
    app = await start_app(make_client, settings, peer, allowed_emails=anyone)
    assert (await _sign_in(app, peer, Person()))[0] == 303


@pytest.mark.parametrize(
    ("changes", "warned"),
    [
        ({"oidc_issuer": "https://id.example.com", "oidc_client_id": "a",
          "oidc_client_secret": "b"}, True),
        ({"host": "0.0.0.0"}, True),
        ({}, False),
        ({"oidc_issuer": "https://id.example.com", "oidc_client_id": "a",
          "oidc_client_secret": "b", "allowed_emails": load_settings(
              {"DISPATCH_ALLOWED_EMAILS": "@example.com"}).allowed_emails}, False),
    ],
    ids=["oidc", "local mode, not loopback", "local mode, loopback", "oidc with a list"],
)  # fmt: skip
async def test_an_open_sign_up_is_announced_at_start(
    make_client: Start,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    warned: bool,
) -> None:
    with caplog.at_level(logging.WARNING):
        await make_client(replace(settings, **changes), roles=frozenset({"api"}))
    logged = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert bool(logged) == warned
    assert (WARNING in capsys.readouterr().err) == warned


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("ada", "'ada' is not an email address nor an @domain"),
        ("@", "'@' is not an email address"),
        ("a@b@c.com", "'a@b@c.com' is not an email address"),
        ("ok@example.com,@-bad-.example", "'@-bad-.example' is not an email address"),
        ("*,ada@example.com", "'\\*' \\(anyone\\) cannot be combined"),
    ],
)
def test_a_bad_allow_list_entry_stops_the_process(raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match="^DISPATCH_ALLOWED_EMAILS: " + message):
        load_settings({"DISPATCH_ALLOWED_EMAILS": raw})

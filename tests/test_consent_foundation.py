"""The consent foundation: one form of an address, signed dispatch tokens, and the feedback
handler every reader calls (matched by Message-ID or token, recorded once, one tenant only)."""

from __future__ import annotations

from typing import Any

import pytest

from dispatch_engine.config import Settings
from dispatch_engine.consent.addresses import AddressError, normalize_address
from dispatch_engine.consent.feedback import (
    Feedback,
    FeedbackEvent,
    FeedbackKind,
    SuppressionReason,
)
from dispatch_engine.consent.settings import ConsentSettings
from dispatch_engine.consent.tokens import DispatchTokens, Purpose
from dispatch_engine.setting import SettingsError, settings_of
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for


def test_an_address_is_one_form_whatever_its_case_or_spelling_of_the_domain() -> None:
    assert normalize_address(" Ada@Example.COM ") == "ada@example.com"
    assert normalize_address("ada@bücher.example") == "ada@xn--bcher-kva.example"
    assert normalize_address("ada@BÜCHER.example") == normalize_address("ada@xn--bcher-kva.example")
    assert normalize_address("ada@example.com.") == "ada@example.com"
    for bad in ("no-at-sign", "@example.com", "ada@", "a" * 400 + "@example.com"):
        with pytest.raises(AddressError):
            normalize_address(bad)


def test_a_dispatch_token_names_its_dispatch_and_nothing_else() -> None:
    unsubscribe = DispatchTokens("k" * 32, Purpose.UNSUBSCRIBE)
    token = unsubscribe.make(123456789)
    assert token == token.lower() and len(token) == 29
    assert unsubscribe.read(token) == 123456789
    assert unsubscribe.read(token.upper()) == 123456789  # an MTA may lower or raise it
    assert DispatchTokens("k" * 32, Purpose.BOUNCE).read(token) is None  # other purpose
    assert DispatchTokens("j" * 32, Purpose.UNSUBSCRIBE).read(token) is None  # other key
    flipped = token[:-1] + ("a" if token[-1] != "a" else "b")
    for bad in (flipped, token[:-1], "", "é" * 29, "0" * 29, token + "a"):
        assert unsubscribe.read(bad) is None
    rotated = DispatchTokens("n" * 32, Purpose.UNSUBSCRIBE, old_secrets=["k" * 32])
    assert rotated.read(token) == 123456789  # old links keep working while keys rotate


def test_consent_settings_refuse_bad_values_naming_the_variable() -> None:
    good = settings_of(
        ConsentSettings, Settings().with_environ(DISPATCH_PAUSE_BOUNCE_PERCENT="2.5")
    )
    assert good.pause_bounce_percent == 2.5 and good.soft_bounce_limit == 3
    for variable, value in (
        ("DISPATCH_PAUSE_BOUNCE_PERCENT", "0"),
        ("DISPATCH_PAUSE_COMPLAINT_PERCENT", "lots"),
        ("DISPATCH_UNSUBSCRIBE_MAILTO", "a@b.c, d@e.f"),
        ("DISPATCH_SOFT_BOUNCE_LIMIT", "0"),
    ):
        with pytest.raises(SettingsError, match=variable):
            settings_of(ConsentSettings, Settings().with_environ(**{variable: value}))


async def _sent(
    make_client: Start, store: Store, owner: str, recipients: list[str]
) -> list[dict[str, Any]]:
    client = await make_client()
    headers = auth(await new_token(store, owner))
    payload = {"subject": "Hi", "body": "Hello", "recipients": recipients}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign = (await response.json())["campaign"]["id"]

    async def all_sent() -> bool:
        rows = await store.pool.fetch(
            "SELECT status FROM dispatches WHERE campaign_id = $1", campaign
        )
        return len(rows) == len(recipients) and all(r["status"] == "sent" for r in rows)

    await wait_for(all_sent)
    rows = await store.pool.fetch(
        "SELECT id, owner_id, recipient, message_id FROM dispatches WHERE campaign_id = $1 "
        "ORDER BY id",
        campaign,
    )
    return [dict(r) for r in rows]


async def test_feedback_acts_once_on_the_dispatch_it_names_and_its_owner_only(
    make_client: Start, store: Store, settings: Settings
) -> None:
    ada = await _sent(
        make_client, store, "ada@example.com", ["Bob@Example.com", "carol@example.com"]
    )
    eve = await _sent(make_client, store, "eve@example.com", ["bob@example.com"])
    feedback = Feedback(store, settings_of(ConsentSettings, settings))
    bounce = FeedbackEvent(
        FeedbackKind.HARD_BOUNCE, "imap", "dsn-1", message_id=ada[0]["message_id"],
        detail="550 5.1.1 no such user",
    )  # fmt: skip
    result = await feedback.handle([bounce])
    assert [a.suppressed for a in result.applied] == [SuppressionReason.HARD_BOUNCE]
    again = await feedback.handle([bounce])  # the same report read twice
    assert again.duplicates == 1 and not again.applied
    status = await store.pool.fetchval("SELECT status FROM dispatches WHERE id = $1", ada[0]["id"])
    assert status == "bounced"
    owner_a, owner_e = ada[0]["owner_id"], eve[0]["owner_id"]
    assert (await store.suppression(owner_a, "bob@example.com")) is not None
    assert (await store.suppression(owner_e, "bob@example.com")) is None  # not the other tenant's
    assert (await store.suppression(owner_a, "carol@example.com")) is None
    # A complaint outranks the bounce; an unknown Message-ID names nothing.
    complaint = FeedbackEvent(FeedbackKind.COMPLAINT, "ses", "c-1", dispatch_id=ada[0]["id"])
    unknown = FeedbackEvent(
        FeedbackKind.HARD_BOUNCE, "imap", "dsn-2", message_id="<" + "0" * 40 + "@example.com>"
    )
    result = await feedback.handle([complaint, unknown])
    assert result.unmatched == 1 and len(result.applied) == 1
    assert result.applied[0].suppressed is None  # suppressed before, for its first reason
    status = await store.pool.fetchval("SELECT status FROM dispatches WHERE id = $1", ada[0]["id"])
    assert status == "complained"


async def test_soft_bounces_suppress_only_at_the_limit(
    make_client: Start, store: Store, settings: Settings
) -> None:
    sent = await _sent(make_client, store, "ada@example.com", ["dave@example.com"])
    consent = settings_of(ConsentSettings, settings.with_environ(DISPATCH_SOFT_BOUNCE_LIMIT="2"))
    feedback = Feedback(store, consent)
    first = FeedbackEvent(FeedbackKind.SOFT_BOUNCE, "imap", "soft-1", dispatch_id=sent[0]["id"])
    second = FeedbackEvent(FeedbackKind.SOFT_BOUNCE, "imap", "soft-2", dispatch_id=sent[0]["id"])
    assert (await feedback.handle([first])).applied[0].suppressed is None
    assert (await store.suppression(sent[0]["owner_id"], "dave@example.com")) is None
    applied = (await feedback.handle([second])).applied[0]
    assert applied.suppressed == SuppressionReason.SOFT_BOUNCE_LIMIT
    status = await store.pool.fetchval("SELECT status FROM dispatches WHERE id = $1", sent[0]["id"])
    assert status == "sent"  # a soft bounce does not say the email did not arrive

"""The provider webhooks through the real app: a signed report bounces or marks its dispatch
and suppresses its address for its owner only; anything unsigned, stale, replayed or foreign
is a 4xx that changes nothing; the same report twice is applied once.

No real provider can post to a test (no peer can do it), so the requests are signed with keys
the test made (tests/support/provider_signers.py): SNS's signing certificate is served over
HTTPS on loopback with a CA the test trusts, and the SNS host pattern names `localhost`.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from dispatch_engine.config import Settings
from dispatch_engine.consent.tokens import DispatchTokens, Purpose
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for
from .support.provider_signers import (
    TOPIC,
    SnsCertServer,
    mailgun_body,
    sendgrid_headers,
    sendgrid_key,
)

MAILGUN_KEY = "key-test-mailgun-signing"
POSTMARK = "Basic " + base64.b64encode(b"hook:s3cret").decode()
SG_PRIVATE, SG_PUBLIC = sendgrid_key()


@pytest.fixture
async def sns_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    async with SnsCertServer(tmp_path) as server:
        monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))  # the test's CA, for the fetch
        yield server


def configured(settings: Settings) -> Settings:
    return settings.with_environ(
        DISPATCH_SES_TOPIC_ARNS=TOPIC,
        DISPATCH_SNS_CERT_HOSTS="localhost",  # the loopback certificate server
        DISPATCH_SENDGRID_PUBLIC_KEY=SG_PUBLIC,
        DISPATCH_MAILGUN_SIGNING_KEY=MAILGUN_KEY,
        DISPATCH_POSTMARK_CREDENTIALS="hook:s3cret",
    )


async def sent(client: AppClient, store: Store, owner: str, to: list[str]) -> list[dict[str, Any]]:
    """`owner` schedules one email to each of `to`; returns the dispatches once all are sent."""
    headers = auth(await new_token(store, owner))
    payload = {"subject": "Hi", "body": "Hello", "recipients": to}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign = (await response.json())["campaign"]["id"]
    query = "SELECT id, owner_id, recipient, message_id, status FROM dispatches " \
        "WHERE campaign_id = $1 ORDER BY id"  # fmt: skip

    async def all_sent() -> bool:
        rows = await store.pool.fetch(query, campaign)
        return len(rows) == len(to) and all(r["status"] == "sent" for r in rows)

    await wait_for(all_sent)
    return [dict(r) for r in await store.pool.fetch(query, campaign)]


async def state(store: Store, dispatch: dict[str, Any]) -> tuple[str, str | None, int]:
    """The dispatch's status, its owner's suppression of its address, and feedback rows."""
    status = await store.pool.fetchval(
        "SELECT status FROM dispatches WHERE id = $1", dispatch["id"]
    )
    reason = await store.pool.fetchval(
        "SELECT reason FROM suppressions WHERE owner_id = $1 AND email_normalized = $2",
        dispatch["owner_id"], dispatch["recipient"].lower(),
    )  # fmt: skip
    events = await store.pool.fetchval(
        "SELECT count(*) FROM feedback_events WHERE dispatch_id = $1", dispatch["id"]
    )
    return status, reason, events


def ses_bounce(message_id: str, recipient: str, bounce_type: str = "Permanent") -> str:
    # "Amazon SES notification contents": a Bounce notification, headers included.
    return orjson.dumps({
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "bounceSubType": "General",
                   "feedbackId": f"fb-{message_id}-{recipient}",
                   "bouncedRecipients": [{"emailAddress": recipient, "status": "5.1.1"}]},
        "mail": {"messageId": "0100-ses", "source": "ada@example.com",
                 "commonHeaders": {"messageId": message_id}},
    }).decode()  # fmt: skip


async def post(client: AppClient, provider: str, body: Any, **headers: str) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await client.post(f"/hooks/feedback/{provider}", data=data, headers=headers)
    return response.status, await response.json()


async def test_a_signed_ses_bounce_marks_its_dispatch_and_suppresses_once(
    make_client: Start, store: Store, settings: Settings, sns_server: SnsCertServer
) -> None:
    client = await make_client(configured(settings))
    bob, carol = await sent(client, store, "ada@example.com", ["bob@example.com", "c@ex.org"])
    notification = sns_server.message(Message=ses_bounce(bob["message_id"], "bob@example.com"))
    assert await post(client, "ses", notification) == (
        200,
        {"applied": 1, "duplicates": 0, "unmatched": 0},
    )
    assert await state(store, bob) == ("bounced", "hard_bounce", 1)
    # SNS redelivers: the same event (its feedbackId) is recorded once and does nothing more.
    assert (await post(client, "ses", notification))[1]["duplicates"] == 1
    assert await state(store, bob) == ("bounced", "hard_bounce", 1)
    assert await state(store, carol) == ("sent", None, 0)
    # A complaint, signed with SignatureVersion 1 (SHA1withRSA); the certificate is cached.
    complaint = orjson.dumps({"notificationType": "Complaint", "mail": {"commonHeaders": {
        "messageId": carol["message_id"]}}, "complaint": {"feedbackId": "c-1",
        "complainedRecipients": [{"emailAddress": "c@ex.org"}]}}).decode()  # fmt: skip
    status, _ = await post(client, "ses", sns_server.message(version="1", Message=complaint))
    assert status == 200 and await state(store, carol) == ("complained", "complaint", 1)
    assert [h for h in sns_server.hits if h.endswith(".pem")] == [
        "/SimpleNotificationService-test.pem"
    ]


async def test_forged_stale_or_foreign_sns_messages_are_refused_and_change_nothing(
    make_client: Start, store: Store, settings: Settings, sns_server: SnsCertServer
) -> None:
    client = await make_client(configured(settings))
    (bob,) = await sent(client, store, "ada@example.com", ["bob@example.com"])
    good = sns_server.message(Message=ses_bounce(bob["message_id"], "bob@example.com"))
    other_host = good["SigningCertURL"].replace("localhost", "127.0.0.1")
    refusals = {
        "forged": {**good, "Message": ses_bounce(bob["message_id"], "bob@example.com", "x")},
        "stale": sns_server.message(Message=good["Message"], Timestamp="2020-01-01T00:00:00Z"),
        "topic": sns_server.message(Message=good["Message"], TopicArn=TOPIC + "-other"),
        "cert host": sns_server.message(Message=good["Message"], SigningCertURL=other_host),
        "http cert": sns_server.message(
            Message=good["Message"], SigningCertURL=good["SigningCertURL"].replace("https", "http")
        ),
        "unsigned": {k: v for k, v in good.items() if k != "Signature"},
    }
    for name, message in refusals.items():
        status, body = await post(client, "ses", message)
        assert 400 <= status < 500 and body["error"]["code"], (name, status, body)
    assert (await post(client, "ses", b"{not json"))[0] == 400
    assert await state(store, bob) == ("sent", None, 0)
    assert not any("127.0.0.1" in h for h in sns_server.hits)


async def test_a_subscription_is_confirmed_only_when_its_message_is_genuine(
    make_client: Start, settings: Settings, sns_server: SnsCertServer
) -> None:
    client = await make_client(configured(settings))
    confirmation = sns_server.message("SubscriptionConfirmation")
    forged = {**confirmation, "SubscribeURL": confirmation["SubscribeURL"] + "&forged=1"}
    assert (await post(client, "ses", forged))[0] == 403
    assert not any("Action=ConfirmSubscription" in h for h in sns_server.hits)
    assert await post(client, "ses", confirmation) == (200, {"confirmed": TOPIC})
    assert [h for h in sns_server.hits if "Action=ConfirmSubscription" in h] == [
        "/?Action=ConfirmSubscription&TopicArn=" + TOPIC + "&Token=t"
    ]


def sendgrid_events(dispatch: dict[str, Any], event_id: str, **more: str) -> bytes:
    # "Event Webhook reference": a batch (JSON array); smtp-id is our Message-ID.
    return orjson.dumps(
        [
            {
                "email": dispatch["recipient"],
                "timestamp": 1700000000,
                "smtp-id": dispatch["message_id"],
                "event": "bounce",
                "type": "bounce",
                "sg_event_id": event_id,
                "reason": "550 5.1.1 unknown",
                **more,
            }
        ]
    )


async def test_sendgrid_signed_events_apply_once_and_bad_signatures_change_nothing(
    make_client: Start, store: Store, settings: Settings
) -> None:
    client = await make_client(configured(settings))
    bob, carol = await sent(client, store, "ada@example.com", ["bob@example.com", "c@ex.org"])
    stale = sendgrid_events(carol, "sg-old")
    old = sendgrid_headers(SG_PRIVATE, stale, timestamp=1_600_000_000)
    assert (await post(client, "sendgrid", stale, **old))[0] == 403
    forged = sendgrid_events(carol, "sg-forged")
    headers = sendgrid_headers(SG_PRIVATE, sendgrid_events(carol, "sg-signed"))
    assert (await post(client, "sendgrid", forged, **headers))[0] == 403
    assert (await post(client, "sendgrid", forged))[0] == 403  # no signature at all
    assert await state(store, carol) == ("sent", None, 0)
    body = sendgrid_events(bob, "sg-1")
    for _ in range(2):  # SendGrid retries: the second post is a duplicate
        status, answer = await post(client, "sendgrid", body, **sendgrid_headers(SG_PRIVATE, body))
        assert status == 200, answer
    assert answer == {"applied": 0, "duplicates": 1, "unmatched": 0}
    assert await state(store, bob) == ("bounced", "hard_bounce", 1)


def mailgun_event(dispatch: dict[str, Any], event_id: str, event: str) -> dict[str, Any]:
    # "Events" reference: the message-id header without its brackets.
    return {"id": event_id, "event": event, "severity": "permanent",
            "recipient": dispatch["recipient"], "timestamp": 1700000000.1,
            "message": {"headers": {"message-id": dispatch["message_id"].strip("<>")}}}  # fmt: skip


async def test_mailgun_refuses_a_reused_token_a_stale_timestamp_and_a_bad_signature(
    make_client: Start, store: Store, settings: Settings
) -> None:
    client = await make_client(configured(settings))
    bob, carol = await sent(client, store, "ada@example.com", ["bob@example.com", "c@ex.org"])
    token = "k" * 50
    first = mailgun_body(MAILGUN_KEY, mailgun_event(bob, "mg-1", "complained"), token=token)
    assert (await post(client, "mailgun", first))[0] == 200
    assert await state(store, bob) == ("complained", "complaint", 1)
    # A captured signature reused for another event: refused, though the HMAC is right.
    replay = mailgun_body(MAILGUN_KEY, mailgun_event(carol, "mg-2", "failed"), token=token)
    assert (await post(client, "mailgun", replay))[0] == 409
    stale = mailgun_body(MAILGUN_KEY, mailgun_event(carol, "mg-3", "failed"), timestamp=1)
    wrong = mailgun_body("another-key", mailgun_event(carol, "mg-4", "failed"))
    for body in (stale, wrong):
        status, answer = await post(client, "mailgun", body)
        assert status == 403 and answer["error"]["code"] == "signature_invalid"
    assert await state(store, carol) == ("sent", None, 0)
    fresh = mailgun_body(MAILGUN_KEY, mailgun_event(carol, "mg-5", "failed"))
    assert (await post(client, "mailgun", fresh))[0] == 200
    assert await state(store, carol) == ("bounced", "hard_bounce", 1)


async def test_postmark_needs_its_credentials_and_matches_by_our_token(
    make_client: Start, store: Store, settings: Settings
) -> None:
    client = await make_client(configured(settings))
    (bob,) = await sent(client, store, "ada@example.com", ["bob@example.com"])
    token = DispatchTokens(settings.secret_key, Purpose.BOUNCE).make(bob["id"])
    # "Bounce webhook" (postmarkapp.com/developer/webhooks/bounce-webhook).
    record = {"RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "TypeCode": 1,
              "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Email": "bob@example.com",
              "Description": "The server was unable to deliver your message",
              "Metadata": {"dispatch_token": token}}  # fmt: skip
    wrong = "Basic " + base64.b64encode(b"hook:guess").decode()
    for headers in ({}, {"Authorization": wrong}):
        status, answer = await post(client, "postmark", record, **headers)
        assert status == 401 and answer["error"]["code"] == "unauthorized"
    assert await state(store, bob) == ("sent", None, 0)
    assert (await post(client, "postmark", record, Authorization=POSTMARK))[0] == 200
    assert await state(store, bob) == ("bounced", "hard_bounce", 1)


async def test_a_report_acts_only_on_the_dispatch_and_recipient_it_names(
    make_client: Start, store: Store, settings: Settings
) -> None:
    client = await make_client(configured(settings))
    (ada_bob,) = await sent(client, store, "ada@example.com", ["bob@example.com"])
    (eve_bob,) = await sent(client, store, "eve@example.com", ["bob@example.com"])
    (eve_carol,) = await sent(client, store, "eve@example.com", ["carol@example.com"])
    # Ada's Message-ID with another recipient, and Eve's token with Ada's recipient: nothing.
    eve_token = DispatchTokens(settings.secret_key, Purpose.BOUNCE).make(eve_carol["id"])
    mismatched = orjson.dumps([
        {**orjson.loads(sendgrid_events(ada_bob, "x-1"))[0], "email": "carol@example.com"},
        {**orjson.loads(sendgrid_events(ada_bob, "x-2"))[0], "smtp-id": "",
         "dispatch_token": eve_token},
    ])  # fmt: skip
    status, answer = await post(
        client, "sendgrid", mismatched, **sendgrid_headers(SG_PRIVATE, mismatched)
    )
    assert (status, answer["unmatched"], answer["applied"]) == (200, 2, 0)
    body = sendgrid_events(ada_bob, "x-3")
    assert (await post(client, "sendgrid", body, **sendgrid_headers(SG_PRIVATE, body)))[0] == 200
    assert await state(store, ada_bob) == ("bounced", "hard_bounce", 1)
    assert await state(store, eve_bob) == ("sent", None, 0)  # same address, other tenant
    assert await state(store, eve_carol) == ("sent", None, 0)


async def test_an_unconfigured_provider_is_not_mounted_and_bodies_are_capped(
    make_client: Start, settings: Settings
) -> None:
    bare = await make_client(settings)
    for provider in ("ses", "sendgrid", "mailgun", "postmark"):
        assert (await bare.post(f"/hooks/feedback/{provider}", data=b"{}")).status == 404
    client = await make_client(replace(configured(settings), max_body_bytes=4096))
    huge = b'{"x": "' + b"x" * 8192 + b'"}'
    status, answer = await post(client, "mailgun", huge)
    assert status == 413 and answer["error"]["code"] == "too_large"


async def test_the_certificate_fetch_obeys_the_outbound_target_checks(
    make_client: Start, store: Store, settings: Settings, sns_server: SnsCertServer
) -> None:
    client = await make_client(replace(configured(settings), allow_private_targets=False))
    (bob,) = await sent(client, store, "ada@example.com", ["bob@example.com"])
    notification = sns_server.message(Message=ses_bounce(bob["message_id"], "bob@example.com"))
    status, answer = await post(client, "ses", notification)
    assert status == 403 and "cannot be fetched" in answer["error"]["message"]
    assert sns_server.hits == []  # loopback is not a public address: never connected
    assert await state(store, bob) == ("sent", None, 0)


async def test_postmark_ip_allow_list_and_the_exemption_covers_only_the_four_paths(
    make_client: Start, store: Store, settings: Settings
) -> None:
    record = {"RecordType": "SpamComplaint", "ID": 7, "Email": "bob@example.com"}
    elsewhere = configured(settings).with_environ(DISPATCH_POSTMARK_ALLOWED_IPS="10.0.0.0/8")
    client = await make_client(elsewhere)
    status, _ = await post(client, "postmark", record, Authorization=POSTMARK)
    assert status == 401  # the test posts from 127.0.0.1
    loopback = configured(settings).with_environ(DISPATCH_POSTMARK_ALLOWED_IPS="127.0.0.1")
    client = await make_client(loopback)
    assert await post(client, "postmark", record, Authorization=POSTMARK) == (
        200,
        {"applied": 0, "duplicates": 0, "unmatched": 1},
    )
    for path in ("/hooks/feedback/postmark/x", "/hooks/feedback/other", "/hooks/feedback/"):
        response = await client.post(path, data=b"{}", headers={"Authorization": POSTMARK})
        assert response.status == 403, path  # still the dashboard's: sign in first


async def test_ses_replaces_our_message_id_so_the_verp_sender_names_the_dispatch(
    make_client: Start, store: Store, settings: Settings, sns_server: SnsCertServer
) -> None:
    client = await make_client(configured(settings))
    (bob,) = await sent(client, store, "ada@example.com", ["bob@example.com"])
    token = DispatchTokens(settings.secret_key, Purpose.BOUNCE).make(bob["id"])
    # "Amazon SES header fields": SES overrides a Message-ID it is given with its own.
    notification = orjson.loads(ses_bounce("<0100018c-ses@email.amazonses.com>", "bob@ex.com"))
    notification["bounce"]["bouncedRecipients"][0]["emailAddress"] = "bob@example.com"
    notification["mail"]["source"] = f"bounce+{token}@bounces.example.com"
    forged = {**notification, "mail": {**notification["mail"], "source": "bounce+" + "a" * 29 +
              "@bounces.example.com"}}  # fmt: skip
    message = sns_server.message(Message=orjson.dumps(forged).decode())
    assert (await post(client, "ses", message))[1]["unmatched"] == 1  # not a genuine token
    message = sns_server.message(Message=orjson.dumps(notification).decode())
    assert (await post(client, "ses", message))[1]["applied"] == 1
    assert await state(store, bob) == ("bounced", "hard_bounce", 1)

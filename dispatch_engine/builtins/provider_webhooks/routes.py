"""`POST /hooks/feedback/<provider>`: the shared route of the provider webhooks.

Each request is checked by its provider's module (signature, freshness, credentials), its
events are matched to our dispatches (a signed `dispatch_token` custom argument first, else
the Message-ID the provider echoed) and handed to the core feedback handler, which records
each once by the provider's event id. A match must also name the dispatch's own recipient,
so a report can never touch an email it does not name. Bodies are capped like every other
route's (DISPATCH_MAX_BODY_BYTES); a refusal is a 4xx JSON error and changes nothing; a
well-signed report about nothing of ours is answered 200 (the provider must not retry it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from dispatch_engine.plugin import (
    AddressError,
    FeedbackEvent,
    FeedbackKind,
    HttpError,
    Settings,
    bounce_token_dispatch,
    feedback_of,
    normalize_address,
    redis_of,
    settings_of,
)

from . import mailgun, postmark, sendgrid, ses, sns
from .reported import MAX_EVENTS, MAX_MESSAGE_IDS, Reported
from .settings import ProviderWebhookSettings

PREFIX = "/hooks/feedback/"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refused(code: str, message: str, status: int = 403) -> HttpError:
    return HttpError(status, code, message)


async def json_body(request: web.Request) -> Any:
    raw = await request.read()  # capped by the body-limit middleware (413 past it)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise HttpError(400, "invalid_json", "the body must be JSON", field="body") from None


def _same_address(a: str, b: str) -> bool:
    def one(address: str) -> str:
        try:
            return normalize_address(address)
        except AddressError:
            return address.strip().lower()

    return one(a) == one(b)


async def _event(app: web.Application, report: Reported) -> FeedbackEvent | None:
    """The core's event for `report`, when it names one of our dispatches and its recipient."""
    feedback = feedback_of(app)
    kind = FeedbackKind(report.kind)
    dispatch_id = bounce_token_dispatch(app, report.token) if report.token else None
    if dispatch_id is not None:
        target = await feedback.store.feedback_target(dispatch_id, None)
        if target is not None and _same_address(target.recipient, report.recipient):
            return FeedbackEvent(kind, report.provider, report.fingerprint,
                                 dispatch_id=dispatch_id, detail=report.detail)  # fmt: skip
    for message_id in report.message_ids[:MAX_MESSAGE_IDS]:  # bounded work per event
        target = await feedback.store.feedback_target(None, message_id)
        if target is not None and _same_address(target.recipient, report.recipient):
            return FeedbackEvent(kind, report.provider, report.fingerprint,
                                 message_id=message_id, detail=report.detail)  # fmt: skip
    return None


async def apply(app: web.Application, reports: list[Reported]) -> web.Response:
    if len(reports) > MAX_EVENTS:
        raise HttpError(413, "too_many_events", f"at most {MAX_EVENTS} events per request")
    events = [event for r in reports if (event := await _event(app, r)) is not None]
    result = await feedback_of(app).handle(events)
    return web.json_response({
        "applied": len(result.applied),
        "duplicates": result.duplicates,
        "unmatched": len(reports) - len(events) + result.unmatched,
    })  # fmt: skip


def ses_route(conf: ProviderWebhookSettings, allow_private: bool) -> Handler:
    certificates = sns.Certificates(allow_private=allow_private)

    async def handle(request: web.Request) -> web.StreamResponse:
        message = await json_body(request)
        if not isinstance(message, dict):
            raise HttpError(400, "invalid_json", "the body must be an SNS message object")
        if message.get("TopicArn") not in conf.ses_topic_arns:
            raise refused("topic_not_allowed", "TopicArn is not in DISPATCH_SES_TOPIC_ARNS")
        try:
            url = sns.check_url(message.get("SigningCertURL"), conf.sns_cert_hosts,
                                "SigningCertURL", pem=True)  # fmt: skip
            sns.canonical(message)  # the shape, before any fetch
            sns.check_fresh(message, conf.max_age_s)
            sns.verify_signature(message, await certificates.get(url))
            if message["Type"] == "SubscriptionConfirmation":
                subscribe = sns.check_url(message.get("SubscribeURL"), conf.sns_cert_hosts,
                                          "SubscribeURL")  # fmt: skip
                await sns.confirm_subscription(subscribe, allow_private=allow_private)
                return web.json_response({"confirmed": message["TopicArn"]})
        except sns.SnsRefused as exc:
            raise refused("signature_invalid", str(exc)) from None
        if message["Type"] != "Notification":
            return web.json_response({"applied": 0})
        try:
            notification = orjson.loads(message["Message"])
        except orjson.JSONDecodeError:
            notification = None  # a test message of the topic, not SES's
        return await apply(request.app, ses.reported(notification, message["MessageId"]))

    return handle


def sendgrid_route(conf: ProviderWebhookSettings) -> Handler:
    key = conf.sendgrid_public_key
    assert key is not None

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            sendgrid.verify(key, body, request.headers.get(sendgrid.SIGNATURE_HEADER),
                            request.headers.get(sendgrid.TIMESTAMP_HEADER),
                            max_age_s=conf.max_age_s)  # fmt: skip
        except sendgrid.SendGridRefused as exc:
            raise refused("signature_invalid", str(exc)) from None
        try:
            reports = sendgrid.reported(orjson.loads(body))
        except (orjson.JSONDecodeError, sendgrid.SendGridRefused):
            raise HttpError(400, "invalid_json", "the body must be a JSON array of events",
                            field="body") from None  # fmt: skip
        return await apply(request.app, reports)

    return handle


def mailgun_route(conf: ProviderWebhookSettings) -> Handler:
    key = conf.mailgun_signing_key
    assert key is not None

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        try:
            token = mailgun.signed_token(body, key, max_age_s=conf.max_age_s)
            reports = mailgun.reported(body)
        except mailgun.MailgunRefused as exc:
            raise refused("signature_invalid", str(exc)) from None
        redis = redis_of(request.app)
        seen = "provider_webhooks:mailgun:" + hashlib.sha256(token.encode()).hexdigest()
        # Remembered past the whole window on both sides of now, so a replay always meets it.
        if not await redis.set(seen, b"1", nx=True, ex=2 * conf.max_age_s + 60):
            raise refused("replayed", "this signature token was used before", status=409)
        try:
            return await apply(request.app, reports)
        except BaseException:
            await redis.delete(seen)  # not applied: Mailgun's retry must be let in
            raise

    return handle


def postmark_route(conf: ProviderWebhookSettings) -> Handler:
    expected = conf.postmark_credentials
    assert expected is not None

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            postmark.check_address(request.remote, conf.postmark_networks)
            postmark.check_credentials(request.headers.get("Authorization"), expected)
        except postmark.PostmarkRefused as exc:
            raise refused("unauthorized", str(exc), status=401) from None
        try:
            reports = postmark.reported(await json_body(request))
        except postmark.PostmarkRefused as exc:
            raise HttpError(400, "invalid_json", str(exc), field="body") from None
        return await apply(request.app, reports)

    return handle


def routes_for(settings: Settings) -> list[web.AbstractRouteDef]:
    """A route for each provider that has its settings; the others are not mounted (404)."""
    conf = settings_of(ProviderWebhookSettings, settings)
    makers: dict[str, Callable[[], Handler]] = {
        "ses": lambda: ses_route(conf, settings.private_targets_allowed),
        "sendgrid": lambda: sendgrid_route(conf),
        "mailgun": lambda: mailgun_route(conf),
        "postmark": lambda: postmark_route(conf),
    }
    return [web.post(PREFIX + name, makers[name]()) for name in conf.mounted()]

"""Webhook transport: POSTs each email as signed JSON to the sender's URL.

Sender settings: `url` (http:// or https://), `password` (the signing secret: sealed at rest
and write-only, like every transport password) and `timeout` (seconds for the whole request,
default 10, at most 30: `outbound.WEBHOOK_MAX_TIMEOUT_S`).

The URL's host must resolve to public addresses unless the operator allows private targets
(`dispatch_engine.outbound`): the connector resolves through `PublicResolver`, so it connects
only to an address it has just checked, and TLS and the Host header keep the URL's name.

Each request carries `X-Dispatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" keyed by the secret>` (Stripe's scheme: the time is signed too, so a receiver can
refuse replays) and `Idempotency-Key: <Message-ID>`, the same on every attempt. Answers: 2xx is
sent; 408, 5xx and connection errors are retried with backoff; 429 parks the sender (for its
`Retry-After` when given); any other status fails the email with the receiver's answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from dispatch_engine.plugin import (
    OutgoingMessage,
    PermanentError,
    SenderRateLimitedError,
    SendResult,
    Settings,
    TransientError,
    TransportContext,
    TransportError,
    TransportSpec,
    hookimpl,
    outbound,
)

SIGNATURE_HEADER = "X-Dispatch-Signature"
TOLERANCE_S = 300  # what `verify` accepts between signing and checking
MAX_RETRY_AFTER_S = 86_400.0
MAX_ANSWER_CHARS = 300  # of a receiver's answer, kept in the ledger


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for `body` sent at `timestamp` (unix seconds)."""
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """For receivers: is `header` a signature of `body` by `secret`, made recently enough?"""
    pairs = [item.strip().partition("=") for item in header.split(",")]
    stamps = [value for key, _, value in pairs if key == "t"]
    if len(stamps) != 1 or not (stamps[0].isascii() and stamps[0].isdigit()):  # not '¹'
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, v) for k, _, v in pairs if k == "v1")


def _part(parsed: EmailMessage, subtype: str) -> str | None:
    part = parsed.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    content = part.get_content()
    return content if isinstance(content, str) else None


def payload(message: OutgoingMessage) -> dict[str, Any]:
    """The JSON body: addresses, subject, the text and HTML parts, and the raw RFC 5322 bytes."""
    parsed = BytesParser(policy=policy.default).parsebytes(message.raw)
    assert isinstance(parsed, EmailMessage)
    return {
        "type": "email",
        "message_id": message.message_id,
        "dispatch_id": message.dispatch_id,
        "from": message.mail_from,
        "to": list(message.recipients),
        "subject": message.subject,
        "text": _part(parsed, "plain"),
        "html": _part(parsed, "html"),
        "raw": base64.b64encode(message.raw).decode(),
    }


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def classify(status: int, answer: str, retry_after: str | None) -> SendResult:
    """A receiver's answer: the result when accepted, else the error that says what next."""
    reply = f"{status} {answer}".strip()
    if 200 <= status < 300:
        return SendResult(reply)
    error: TransportError
    if status == 429:
        error = SenderRateLimitedError(f"webhook answered {reply}", _retry_after(retry_after))
    elif status == 408 or status >= 500:
        error = TransientError(f"webhook answered {reply}")
    else:
        error = PermanentError(f"webhook answered {reply}")
    error.failure_code = f"http_{status}"  # what a sender test answers
    raise error


class WebhookTransport:
    """One HTTP client per sender, reusing its connections."""

    def __init__(self, context: TransportContext) -> None:
        own = context.sender_settings
        url = own.get("url")
        parts = urlsplit(url if isinstance(url, str) else "")
        if not isinstance(url, str) or parts.scheme not in ("http", "https") or not parts.hostname:
            raise PermanentError("the webhook transport needs settings.url, an http(s):// URL")
        secret = own.get("password")
        if not isinstance(secret, str) or not secret:
            raise PermanentError("the webhook transport needs settings.password, its secret")
        timeout = own.get("timeout", outbound.WEBHOOK_TIMEOUT_S)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise PermanentError("settings.timeout must be a number of seconds")
        timeout = min(float(timeout), outbound.WEBHOOK_MAX_TIMEOUT_S)  # saved before the bound
        self.url = url
        self.host = parts.hostname
        self.where = parts.netloc.rpartition("@")[2]  # never show credentials in a URL
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.allow_private = context.settings.private_targets_allowed
        self._session: aiohttp.ClientSession | None = None

    async def _post(
        self, body: dict[str, Any], idempotency_key: str
    ) -> tuple[int, str, str | None]:
        """POST `body`: the status, the start of the answer and its Retry-After."""
        # aiohttp skips the resolver for an IP literal: check that one here.
        if outbound.literal(self.host) is not None:
            outbound.check_address(self.host, self.host, allow_private=self.allow_private)
        if self._session is None or self._session.closed:
            resolver = outbound.PublicResolver(allow_private=self.allow_private)
            connector = aiohttp.TCPConnector(resolver=resolver)
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        data = orjson.dumps(body)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "dispatch-engine-webhook",
            "Idempotency-Key": idempotency_key,
            SIGNATURE_HEADER: sign(self.secret, data, int(time.time())),
        }
        async with self._session.post(
            self.url, data=data, headers=headers, allow_redirects=False
        ) as response:
            answer = await response.content.read(MAX_ANSWER_CHARS * 4)
            text = answer.decode("utf-8", errors="replace")[:MAX_ANSWER_CHARS]
            return response.status, " ".join(text.split()), response.headers.get("Retry-After")

    async def send(self, message: OutgoingMessage) -> SendResult:
        try:
            status, answer, retry_after = await self._post(payload(message), message.message_id)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{self.where}: {type(exc).__name__}: {exc}") from None
        return classify(status, answer, retry_after)

    async def check(self) -> str:
        """POST a signed `{"type": "ping"}` (for `POST /api/senders/{id}/test`); the outcome
        in our words only: the receiver's answer is never shown."""
        now = int(time.time())
        status, _answer, _retry_after = await self._post({"type": "ping", "at": now}, f"ping-{now}")
        if not 200 <= status < 300:
            raise outbound.CheckFailedError(
                f"http_{status}", f"{self.where} answered the ping with HTTP status {status}"
            )
        return f"{self.where} accepted the ping (HTTP {status})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@hookimpl(trylast=True)
def register_transports(settings: Settings) -> list[TransportSpec]:
    return [TransportSpec("webhook", WebhookTransport, "POSTs each email as signed JSON")]

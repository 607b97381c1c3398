"""Amazon SNS over HTTPS: the message signature, the signing certificate, confirmations.

As AWS documents it ("Verifying the signatures of Amazon SNS messages",
https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html): the string
to sign is `Name\\nValue\\n` for each signed field in byte order of the names (Notification:
Message, MessageId, Subject if present, Timestamp, TopicArn, Type; the two confirmations:
Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type); SignatureVersion 1 is
SHA1withRSA, 2 is SHA256withRSA, over the certificate fetched from `SigningCertURL`. That
URL must be https on an SNS host (the AWS SDKs' validators allow `sns.<region>.amazonaws.com`);
the certificate comes over TLS checked against the system's CAs and is cached by URL.
A `SubscriptionConfirmation` is confirmed by fetching its `SubscribeURL`, only after its
signature and topic were checked, through the outbound target checks (`outbound`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dispatch_engine.plugin import TransportError, outbound

SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERT_BYTES = 16 * 1024
MAX_CACHED_CERTS = 32  # SNS signs with a handful of certificates per region
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=10)


class SnsRefused(ValueError):
    """The message is not a genuine, fresh SNS message for us; the text says why."""


def canonical(message: Mapping[str, Any]) -> bytes:
    """The string SNS signed for `message` (its Type decides the fields)."""
    fields = SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        raise SnsRefused("Type must be Notification, SubscriptionConfirmation or …Confirmation")
    out = []
    for name in fields:
        value = message.get(name)
        if value is None and name == "Subject":
            continue  # "if Subject is not present, do not include it"
        if not isinstance(value, str):
            raise SnsRefused(f"{name} must be a string")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode()


def check_url(url: object, hosts: re.Pattern[str], what: str, *, pem: bool = False) -> str:
    """`url` when it is https on an allowed SNS host (and names a .pem file when `pem`)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise SnsRefused(f"{what} must be a URL")
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        raise SnsRefused(f"{what} must be an https URL")
    if not parts.hostname or not hosts.fullmatch(parts.hostname):
        raise SnsRefused(f"{what} is not on an Amazon SNS host")
    if pem and not parts.path.endswith(".pem"):
        raise SnsRefused(f"{what} must name a .pem certificate")
    return url


def verify_signature(message: Mapping[str, Any], certificate: x509.Certificate) -> None:
    """SnsRefused unless `message` carries a valid signature by `certificate`."""
    digest = HASHES.get(str(message.get("SignatureVersion")))
    if digest is None:
        raise SnsRefused("SignatureVersion must be 1 or 2")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError):
        raise SnsRefused("Signature must be base64") from None
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsRefused("the signing certificate does not hold an RSA key")
    try:
        key.verify(signature, canonical(message), padding.PKCS1v15(), digest())
    except InvalidSignature:
        raise SnsRefused("the signature does not match the message") from None


def check_fresh(message: Mapping[str, Any], max_age_s: int, now: datetime | None = None) -> None:
    try:
        stamp = datetime.fromisoformat(str(message.get("Timestamp")).replace("Z", "+00:00"))
    except ValueError:
        raise SnsRefused("Timestamp must be an ISO 8601 time") from None
    if stamp.tzinfo is None:
        raise SnsRefused("Timestamp must name its time zone")
    age = ((now or datetime.now(UTC)) - stamp).total_seconds()
    if not -300 <= age <= max_age_s:  # a few minutes of clock skew ahead
        raise SnsRefused(f"Timestamp is older than {max_age_s} s (or in the future)")


class Certificates:
    """The signing certificates by URL, fetched over checked TLS once each."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._cached: dict[str, x509.Certificate] = {}
        self._lock = asyncio.Lock()

    async def get(self, url: str) -> x509.Certificate:
        found = self._cached.get(url)
        if found is not None:
            return found
        async with self._lock:  # one fetch per URL, even when a batch of messages arrives
            if url not in self._cached:
                certificate = await self._fetch(url)
                if len(self._cached) >= MAX_CACHED_CERTS:
                    self._cached.pop(next(iter(self._cached)))
                self._cached[url] = certificate
            return self._cached[url]

    async def _fetch(self, url: str) -> x509.Certificate:
        try:
            body = await fetch(url, allow_private=self.allow_private, limit=MAX_CERT_BYTES)
            certificate = x509.load_pem_x509_certificate(body)
        except (aiohttp.ClientError, OSError, TimeoutError, TransportError) as exc:
            raise SnsRefused(
                f"the signing certificate cannot be fetched: {type(exc).__name__}"
            ) from None
        except ValueError:
            raise SnsRefused("the signing certificate is not a PEM certificate") from None
        now = datetime.now(UTC)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise SnsRefused("the signing certificate is expired or not yet valid")
        return certificate


async def fetch(url: str, *, allow_private: bool, limit: int) -> bytes:
    """GET `url` (TLS checked, target checked by `outbound`); at most `limit` bytes."""
    connector = aiohttp.TCPConnector(
        resolver=outbound.PublicResolver(allow_private=allow_private),
        ssl=ssl.create_default_context(),  # the system's CAs (and SSL_CERT_FILE), read now
    )
    async with (
        aiohttp.ClientSession(connector=connector, timeout=FETCH_TIMEOUT) as session,
        session.get(url, allow_redirects=False) as response,
    ):
        if response.status != 200:
            raise aiohttp.ClientResponseError(
                response.request_info, (), status=response.status, message="not 200"
            )
        body = await response.content.read(limit + 1)
        if len(body) > limit:
            raise aiohttp.ClientPayloadError(f"more than {limit} bytes")
        return body


async def confirm_subscription(url: str, *, allow_private: bool) -> None:
    """Fetch the SubscribeURL of a checked SubscriptionConfirmation (SNS then starts posting)."""
    try:
        await fetch(url, allow_private=allow_private, limit=64 * 1024)
    except (aiohttp.ClientError, OSError, TimeoutError, TransportError) as exc:
        raise SnsRefused(f"the subscription cannot be confirmed: {type(exc).__name__}") from None

"""Requests signed as SES/SNS, SendGrid and Mailgun sign theirs, with keys the test made.

No real provider can post to a test on loopback, so these sign with keys generated here
(no peer can do it): an RSA signing certificate for SNS, served over HTTPS on loopback by
`SnsCertServer` with a CA of the test's own (trusted through SSL_CERT_FILE); an EC P-256
key for SendGrid; an HMAC key for Mailgun. The schemes are the providers' documented ones
(cited in dispatch_engine/builtins/provider_webhooks/), and the SendGrid verifier also
passes SendGrid's own SDK test vector (tests/test_provider_webhooks.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from .tls_certs import tls_server

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"


def signing_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    """An RSA key and a PEM certificate for it (SNS's own certificates are RSA)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


class SnsCertServer:
    """HTTPS on loopback (as `localhost`): the signing certificate and SubscribeURL hits."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca_file, self._context = tls_server(tmp_path, "localhost")
        self.key, self.pem = signing_certificate()
        self.hits: list[str] = []  # path + query of every request
        self.base = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits.append(request.path_qs)
        if request.path.endswith(".pem"):
            return web.Response(body=self.pem, content_type="application/x-pem-file")
        return web.Response(text="<ConfirmSubscriptionResponse/>", content_type="text/xml")

    async def __aenter__(self) -> SnsCertServer:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._context)
        await site.start()
        self.base = f"https://localhost:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def cert_url(self) -> str:
        return f"{self.base}/SimpleNotificationService-test.pem"

    def message(
        self, kind: str = "Notification", *, version: str = "2", **fields: Any
    ) -> dict[str, Any]:
        """An SNS message of `kind`, as SNS posts it ("HTTP/HTTPS notification JSON format",
        https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html), signed."""
        message: dict[str, Any] = {
            "Type": kind,
            "MessageId": f"sns-{secrets.token_hex(8)}",
            "TopicArn": TOPIC,
            "Message": "{}",
            "Timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "SignatureVersion": version,
            "SigningCertURL": self.cert_url,
        }
        if kind != "Notification":
            message["Token"] = secrets.token_hex(16)
            message["SubscribeURL"] = (
                f"{self.base}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=t"
            )
        message.update(fields)
        return sign_sns(message, self.key)


def string_to_sign(message: dict[str, Any]) -> bytes:
    """Written here from AWS's steps, not imported, so the verifier is checked against it:
    "Name\nValue\n" per field, in this order; Subject only when the message has one."""
    if message["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()


def sign_sns(message: dict[str, Any], key: rsa.RSAPrivateKey) -> dict[str, Any]:
    digest = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()
    signature = key.sign(string_to_sign(message), padding.PKCS1v15(), digest)
    return {**message, "Signature": base64.b64encode(signature).decode()}


def sendgrid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and its public half as SendGrid's dashboard shows it (base64 DER)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()


def sendgrid_headers(
    key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def mailgun_body(
    signing_key: str, event_data: dict[str, Any], *, timestamp: int | None = None,
    token: str | None = None,
) -> bytes:  # fmt: skip
    """A Mailgun webhook body ("Securing Webhooks": signature beside event-data)."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or secrets.token_hex(25)  # 50 characters, as Mailgun's
    digest = hmac.new(signing_key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    signature = {"timestamp": stamp, "token": token, "signature": digest}
    return orjson.dumps({"signature": signature, "event-data": event_data})

"""The provider webhooks' settings: a provider without its settings is not mounted (404).

Each value is checked when the process starts (a bad one stops it, naming the variable):
the SendGrid key must be an EC P-256 public key, the SNS host pattern a regular expression,
the Postmark credentials `user:password`, the IP allow-list addresses or networks.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from dispatch_engine.plugin import SettingsError, names, setting, text, whole_number

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# What the AWS SDKs' message validators accept as a signing certificate's host.
SNS_CERT_HOSTS = r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"


def host_pattern(name: str, raw: str) -> re.Pattern[str]:
    try:
        return re.compile(raw, re.IGNORECASE)
    except re.error as exc:
        raise SettingsError(f"{name} must be a regular expression: {exc}") from None


def ec_public_key(name: str, raw: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER (as its dashboard shows it) or PEM."""
    try:
        if raw.startswith("-----BEGIN"):
            key = load_pem_public_key(raw.encode())
        else:
            key = load_der_public_key(base64.b64decode(raw, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SettingsError(f"{name} must be SendGrid's EC P-256 verification key (base64)")
    return key


def credentials(name: str, raw: str) -> tuple[str, str]:
    user, colon, password = raw.partition(":")
    if not colon or not user or not password:
        raise SettingsError(f"{name} must be user:password (the webhook URL's Basic auth)")
    return user, password


def networks(name: str, raw: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in names(name, raw))
    except ValueError as exc:
        raise SettingsError(f"{name} must list IP addresses or networks: {exc}") from None


@dataclass(frozen=True)
class ProviderWebhookSettings:
    ses_topic_arns: tuple[str, ...] = setting(
        "DISPATCH_SES_TOPIC_ARNS",
        (),
        names,
        "the SNS topics (ARNs, comma-separated) whose SES notifications "
        "POST /hooks/feedback/ses accepts; unset: the route is not mounted",
    )
    sns_cert_hosts: re.Pattern[str] = setting(
        "DISPATCH_SNS_CERT_HOSTS",
        re.compile(SNS_CERT_HOSTS, re.IGNORECASE),
        host_pattern,
        "the hosts an SNS SigningCertURL may name (a regular expression matched in full); "
        "operators never change it: it exists so tests can serve a certificate on loopback",
    )
    sendgrid_public_key: ec.EllipticCurvePublicKey | None = setting(
        "DISPATCH_SENDGRID_PUBLIC_KEY",
        None,
        ec_public_key,
        "SendGrid's signed event webhook verification key (base64, from its Mail Settings); "
        "unset: POST /hooks/feedback/sendgrid is not mounted",
    )
    mailgun_signing_key: str | None = setting(
        "DISPATCH_MAILGUN_SIGNING_KEY",
        None,
        text,
        "Mailgun's HTTP webhook signing key; unset: POST /hooks/feedback/mailgun is not mounted",
        secret=True,
    )
    postmark_credentials: tuple[str, str] | None = setting(
        "DISPATCH_POSTMARK_CREDENTIALS",
        None,
        credentials,
        "user:password of the Basic auth on the Postmark webhook URL; "
        "unset: POST /hooks/feedback/postmark is not mounted",
        secret=True,
    )
    postmark_networks: tuple[Network, ...] = setting(
        "DISPATCH_POSTMARK_ALLOWED_IPS",
        (),
        networks,
        "addresses or networks Postmark's webhooks may come from (comma-separated); unset: any",
    )
    max_age_s: int = setting(
        "DISPATCH_PROVIDER_WEBHOOK_MAX_AGE_S",
        3600,
        whole_number(60, 86_400),
        "how old a signed webhook's timestamp may be (SES/SNS, SendGrid, Mailgun); "
        "Mailgun tokens are remembered this long, so a replay is refused",
    )

    def mounted(self) -> tuple[str, ...]:
        """The providers with settings, in the order their routes are added."""
        present = {
            "ses": bool(self.ses_topic_arns),
            "sendgrid": self.sendgrid_public_key is not None,
            "mailgun": self.mailgun_signing_key is not None,
            "postmark": self.postmark_credentials is not None,
        }
        return tuple(name for name, on in present.items() if on)

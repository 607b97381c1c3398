"""Typed settings, read once from the environment (and a `.env` file when present).

Every variable is validated when the process starts; a bad value raises `SettingsError`
whose message names the variable, and the CLI prints that one line and exits.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

if TYPE_CHECKING:
    from .builtins.business_hours.weekly import WeeklyWindow

T = TypeVar("T")

TransportName = str
SmtpTls = Literal["none", "starttls", "tls"]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _plugin_filter(raw: str) -> tuple[tuple[str, ...] | None, tuple[str, ...]]:
    """DISPATCH_PLUGINS: `a,b` loads only those plugins, `-a,-b` every plugin but those."""
    names = [part.strip() for part in raw.split(",") if part.strip()]
    for name in names:
        if not _PLUGIN_NAME.fullmatch(name.removeprefix("-")):
            raise SettingsError(f"DISPATCH_PLUGINS: {name!r} is not a plugin name")
    deny = tuple(n.removeprefix("-") for n in names if n.startswith("-"))
    allow = tuple(n for n in names if not n.startswith("-"))
    if allow and deny:
        raise SettingsError(
            "DISPATCH_PLUGINS must list plugins to load (a,b) or plugins to leave out (-a,-b), "
            f"not both; got {raw!r}"
        )
    return (allow or None), deny


def _weekly(name: str, raw: str) -> WeeklyWindow:
    from .builtins.business_hours.weekly import EXAMPLE, parse_weekly_window

    try:
        return parse_weekly_window(raw)
    except ValueError as exc:
        raise SettingsError(f"{name} must look like {EXAMPLE!r}: {exc}") from None


GOOGLE_ISSUER = "https://accounts.google.com"


def _mailbox(address: str) -> tuple[str, str]:
    """(local part, domain) compared case-insensitively, the domain in its ASCII (A-label) form."""
    checked = validate_email(address, check_deliverability=False)
    return checked.local_part.lower(), checked.ascii_domain.lower()


@dataclass(frozen=True)
class AllowedEmails:
    """DISPATCH_ALLOWED_EMAILS: who may sign in. Addresses, `@domain` entries, or `*` (anyone)."""

    addresses: frozenset[tuple[str, str]] = frozenset()
    domains: frozenset[str] = frozenset()
    anyone: bool = False

    def permits(self, email: str) -> bool:
        if self.anyone:
            return True
        try:
            local, domain = _mailbox(email)
        except EmailNotValidError:
            return False
        return domain in self.domains or (local, domain) in self.addresses


def _allowed_emails(name: str, raw: str) -> AllowedEmails:
    addresses: set[tuple[str, str]] = set()
    domains: set[str] = set()
    entries = [part.strip() for part in raw.split(",") if part.strip()]
    for entry in entries:
        try:
            if entry.startswith("@"):
                domains.add(_mailbox("a" + entry)[1])
            elif entry != "*":
                addresses.add(_mailbox(entry))
        except EmailNotValidError as exc:
            raise SettingsError(
                f"{name}: {entry!r} is not an email address nor an @domain ({exc})"
            ) from None
    if "*" in entries and len(entries) > 1:
        raise SettingsError(f"{name}: '*' (anyone) cannot be combined with other entries")
    return AllowedEmails(frozenset(addresses), frozenset(domains), anyone="*" in entries)


@dataclass(frozen=True)
class OidcClient:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    max_emails_per_hour: int = 50
    rate_window_seconds: int = 3600
    day_seconds: int = 86_400  # the daily limits' day; shorter only to try limits quickly
    pacing: tuple[str, ...] = ("fixed_window", "min_gap")
    worker_concurrency: int = 200
    worker_batch_size: int = 100
    max_attempts: int = 5
    retry_base_ms: int = 5000
    lease_seconds: int = 60
    queue_shards: int = 1
    smtp_host: str = "localhost"
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_tls: SmtpTls = "starttls"
    smtp_pool_size: int = 8
    smtp_ca_file: Path | None = None  # PEM bundle trusted for SMTP TLS besides the system's
    google_client_id: str | None = None
    google_client_secret: str | None = field(default=None, repr=False)
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = field(default=None, repr=False)
    allowed_emails: AllowedEmails | None = None  # None: anyone with a verified email
    secret_key: str = field(default="", repr=False)
    old_secret_keys: tuple[str, ...] = field(default=(), repr=False)
    base_url: str | None = None
    data_dir: Path = Path("var")
    transport: TransportName = "capture"
    host: str = "127.0.0.1"
    port: int = 8080
    plugins_dir: Path | None = None
    plugins_allow: tuple[str, ...] | None = None  # DISPATCH_PLUGINS=a,b (None: every plugin)
    plugins_deny: tuple[str, ...] = ()  # DISPATCH_PLUGINS=-a,-b
    business_hours: WeeklyWindow | None = None
    notify_webhook_url: str | None = field(default=None, repr=False)  # its path is a secret
    log_level: str = "INFO"
    log_format: str = "text"
    redis_cluster: bool = False
    # Limits on what one request may carry (docs/operations.md, "Limits").
    max_upload_bytes: int = 64 * 1024**2  # schedule and Compose routes (CSV uploads)
    max_body_bytes: int = 1024**2  # every other route
    max_recipients: int = 1_000_000  # per campaign
    max_upload_lines: int = 1_500_000  # CSV lines or JSON list entries per request
    allow_private_targets: bool | None = None  # None: only in local mode (loopback, no OIDC)
    dev_login: bool | None = None  # None: only in local mode; True: opted in on any bind

    @property
    def public_url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}"

    @property
    def oidc(self) -> OidcClient | None:
        """The OpenID Connect login client (Google's by default), or None: local mode."""
        if self.oidc_issuer and self.oidc_client_id and self.oidc_client_secret:
            return OidcClient(self.oidc_issuer, self.oidc_client_id, self.oidc_client_secret)
        if self.google_client_id and self.google_client_secret:
            return OidcClient(GOOGLE_ISSUER, self.google_client_id, self.google_client_secret)
        return None

    @property
    def local_mode(self) -> bool:
        """No login provider is configured (the dev login needs a loopback bind as well)."""
        return self.oidc is None

    @property
    def loopback_bind(self) -> bool:
        """The app listens on loopback only: no one from another machine reaches it."""
        return is_loopback_host(self.host)

    @property
    def private_targets_allowed(self) -> bool:
        """Senders may connect to loopback/private addresses (dispatch_engine.outbound)."""
        if self.allow_private_targets is not None:
            return self.allow_private_targets
        return self.local_mode and self.loopback_bind

    @property
    def dev_login_enabled(self) -> bool:
        """ "Continue as dev user" exists: never with OIDC, else on loopback or opted in."""
        if self.oidc is not None:
            return False
        return self.loopback_bind if self.dev_login is None else self.dev_login

    def with_urls(self, database_url: str, redis_url: str) -> Settings:
        return replace(self, database_url=database_url, redis_url=redis_url)


def is_loopback_host(host: str) -> bool:
    """`localhost`, or an address of 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _int(name: str, raw: str, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise SettingsError(
            f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, "
            f"got {raw!r}"
        )
    return raw


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    return value in ("true", "1", "yes")


def _bool_tls(name: str, raw: str) -> SmtpTls:
    aliases: dict[str, SmtpTls] = {
        "none": "none",
        "off": "none",
        "false": "none",
        "0": "none",
        "no": "none",
        "starttls": "starttls",
        "true": "starttls",
        "1": "starttls",
        "yes": "starttls",
        "tls": "tls",
        "ssl": "tls",
        "implicit": "tls",
    }
    value = aliases.get(raw.strip().lower())
    if value is None:
        raise SettingsError(f"{name} must be one of none, starttls, tls, got {raw!r}")
    return value


_OIDC_VARIABLES = (
    "GOOGLE_CLIENT_ID",
    "GOOGLE_CLIENT_SECRET",
    "OIDC_ISSUER",
    "OIDC_CLIENT_ID",
    "OIDC_CLIENT_SECRET",
)


def _ca_file(name: str, raw: str) -> Path:
    """A PEM file of CA certificates that OpenSSL loads (checked now, not at the first send)."""
    path = Path(raw)
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        message = f"{name} must be a readable PEM file of CA certificates: {exc}"
        raise SettingsError(message) from None
    return path


def _oidc_settings(raw: dict[str, str | None]) -> dict[str, str | None]:
    """Login: GOOGLE_CLIENT_ID + _SECRET, or OIDC_ISSUER + OIDC_CLIENT_ID + _SECRET, or none."""
    for group in (_OIDC_VARIABLES[:2], _OIDC_VARIABLES[2:]):
        given = [name for name in group if raw[name]]
        if given and len(given) < len(group):
            missing = ", ".join(name for name in group if not raw[name])
            raise SettingsError(f"{missing} must be set too (with {', '.join(given)})")
    if raw["GOOGLE_CLIENT_ID"] and raw["OIDC_ISSUER"]:
        raise SettingsError("set GOOGLE_CLIENT_ID/_SECRET or OIDC_ISSUER/_CLIENT_*, not both")
    issuer = raw["OIDC_ISSUER"]
    if issuer is not None:
        parts = urlsplit(issuer)
        loopback = is_loopback_host(parts.hostname or "")
        secure = parts.scheme == "https" or (parts.scheme == "http" and loopback)
        if not parts.hostname or not secure:
            raise SettingsError(
                f"OIDC_ISSUER must be an https:// URL (http:// only on loopback), got {issuer!r}"
            )
        if parts.query or parts.fragment:
            raise SettingsError(f"OIDC_ISSUER must have no query or fragment, got {issuer!r}")
        issuer = issuer.rstrip("/")
    return {
        "google_client_id": raw["GOOGLE_CLIENT_ID"],
        "google_client_secret": raw["GOOGLE_CLIENT_SECRET"],
        "oidc_issuer": issuer,
        "oidc_client_id": raw["OIDC_CLIENT_ID"],
        "oidc_client_secret": raw["OIDC_CLIENT_SECRET"],
    }


def load_settings(
    environ: Mapping[str, str] | None = None, *, read_dotenv: bool = True
) -> Settings:
    """Build Settings from `environ` (default: os.environ plus `.env` in the working folder)."""
    env: dict[str, str] = {}
    if environ is None:
        if read_dotenv and Path(".env").is_file():
            from dotenv import dotenv_values

            env.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
        env.update(os.environ)
    else:
        env.update(environ)

    def get(name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return parse(name, raw.strip())

    def text(name: str, raw: str) -> str:
        return raw

    def port(name: str, raw: str) -> int:
        return _int(name, raw, 1, 65535)

    def names(name: str, raw: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())

    pacing = get("DISPATCH_PACING", names, Settings.pacing)
    transport = get("DISPATCH_TRANSPORT", text, "capture")
    if not transport.replace("_", "").replace("-", "").isalnum():
        raise SettingsError(f"DISPATCH_TRANSPORT must be a transport name, got {transport!r}")
    secret_key = get("DISPATCH_SECRET_KEY", text, "")
    if secret_key and len(secret_key) < 16:
        raise SettingsError("DISPATCH_SECRET_KEY must be at least 16 characters long")
    base_url = get("DISPATCH_BASE_URL", lambda n, r: _url(n, r, ("http", "https")), None)
    login = _oidc_settings({k: get(k, text, None) for k in _OIDC_VARIABLES})
    plugins_dir = get("DISPATCH_PLUGINS_DIR", lambda n, r: Path(r), None)
    if plugins_dir is not None and not plugins_dir.is_dir():
        raise SettingsError(f"DISPATCH_PLUGINS_DIR must be a folder, {str(plugins_dir)!r} is not")
    plugins_allow, plugins_deny = _plugin_filter(env.get("DISPATCH_PLUGINS", ""))
    dev_login = get("DISPATCH_DEV_LOGIN", _bool, None)
    if dev_login and (login["oidc_issuer"] or login["google_client_id"]):
        raise SettingsError("DISPATCH_DEV_LOGIN cannot be on with a login provider (OIDC_*)")

    return Settings(
        database_url=get("DATABASE_URL", lambda n, r: _url(n, r, ("postgresql", "postgres")), None),
        redis_url=get("REDIS_URL", lambda n, r: _url(n, r, ("redis", "rediss", "unix")), None),
        max_emails_per_hour=get(
            "MAX_EMAILS_PER_HOUR", lambda n, r: _int(n, r, 1, 1_000_000_000), 50
        ),
        rate_window_seconds=get(
            "DISPATCH_RATE_WINDOW_SECONDS", lambda n, r: _int(n, r, 1, 86_400 * 7), 3600
        ),
        day_seconds=get("DISPATCH_DAY_SECONDS", lambda n, r: _int(n, r, 1, 86_400 * 31), 86_400),
        pacing=pacing,
        worker_concurrency=get("WORKER_CONCURRENCY", lambda n, r: _int(n, r, 1, 10_000), 200),
        worker_batch_size=get("WORKER_BATCH_SIZE", lambda n, r: _int(n, r, 1, 5_000), 100),
        max_attempts=get("DISPATCH_MAX_ATTEMPTS", lambda n, r: _int(n, r, 1, 100), 5),
        retry_base_ms=get("DISPATCH_RETRY_BASE_MS", lambda n, r: _int(n, r, 1, 3_600_000), 5000),
        lease_seconds=get("DISPATCH_LEASE_SECONDS", lambda n, r: _int(n, r, 2, 3600), 60),
        queue_shards=get("DISPATCH_QUEUE_SHARDS", lambda n, r: _int(n, r, 1, 1024), 1),
        smtp_host=get("SMTP_HOST", text, "localhost"),
        smtp_port=get("SMTP_PORT", port, 587),
        smtp_user=get("SMTP_USER", text, None),
        smtp_password=get("SMTP_PASSWORD", text, None),
        smtp_tls=get("SMTP_TLS", _bool_tls, "starttls"),
        smtp_pool_size=get("SMTP_POOL_SIZE", lambda n, r: _int(n, r, 1, 64), 8),
        smtp_ca_file=get("SMTP_CA_FILE", _ca_file, None),
        **login,
        allowed_emails=get("DISPATCH_ALLOWED_EMAILS", _allowed_emails, None),
        secret_key=secret_key,
        old_secret_keys=get("DISPATCH_OLD_SECRET_KEYS", names, ()),
        base_url=base_url,
        data_dir=get("DISPATCH_DATA_DIR", lambda n, r: Path(r), Path("var")),
        transport=transport,
        host=get("DISPATCH_HOST", text, "127.0.0.1"),
        port=get("DISPATCH_PORT", lambda n, r: _int(n, r, 0, 65535), 8080),
        plugins_dir=plugins_dir,
        plugins_allow=plugins_allow,
        plugins_deny=plugins_deny,
        business_hours=get("DISPATCH_BUSINESS_HOURS", _weekly, None),
        notify_webhook_url=get(
            "DISPATCH_NOTIFY_WEBHOOK_URL", lambda n, r: _url(n, r, ("http", "https")), None
        ),
        log_format=get("DISPATCH_LOG_FORMAT", lambda n, r: _choice(n, r, ("text", "json")), "text"),
        redis_cluster=get("DISPATCH_REDIS_CLUSTER", _bool, False),
        max_upload_bytes=get(
            "DISPATCH_MAX_UPLOAD_BYTES", lambda n, r: _int(n, r, 1024, 1024**3), 64 * 1024**2
        ),
        max_body_bytes=get(
            "DISPATCH_MAX_BODY_BYTES", lambda n, r: _int(n, r, 1024, 1024**3), 1024**2
        ),
        max_recipients=get(
            "DISPATCH_MAX_RECIPIENTS", lambda n, r: _int(n, r, 1, 100_000_000), 1_000_000
        ),
        max_upload_lines=get(
            "DISPATCH_MAX_UPLOAD_LINES", lambda n, r: _int(n, r, 1, 200_000_000), 1_500_000
        ),
        allow_private_targets=get("DISPATCH_ALLOW_PRIVATE_TARGETS", _bool, None),
        dev_login=dev_login,
        log_level=get(
            "DISPATCH_LOG_LEVEL",
            lambda n, r: _choice(n, r, ("debug", "info", "warning", "error")).upper(),
            "INFO",
        ),
    )


def ensure_secret_key(settings: Settings) -> Settings:
    """Local mode: keep a generated secret in the data folder so sessions survive restarts."""
    if settings.secret_key:
        return settings
    path = settings.data_dir / "secret_key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return replace(settings, secret_key=path.read_text().strip())

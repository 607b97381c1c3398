"""Typed settings, read once from the environment (and a `.env` file when present).

Each setting is declared once, as a field of `Settings` naming its variable, default,
parser and meaning (`dispatch_engine.setting`); plugins declare their own the same way.
Every variable is validated when the process starts; a bad value raises `SettingsError`
whose message names the variable, and the CLI prints that one line and exits.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .login_config import (
    GOOGLE_ISSUER,
    AllowedEmails,
    OidcClient,
    check_login,
    is_loopback_host,
    parse_allowed_emails,
    parse_issuer,
)
from .setting import (
    SettingsError,
    boolean,
    choice,
    names,
    path,
    read_settings,
    setting,
    settings_of,
    text,
    url,
    whole_number,
)

__all__ = [
    "GOOGLE_ISSUER",
    "AllowedEmails",
    "OidcClient",
    "PluginFilter",
    "Settings",
    "SettingsError",
    "ensure_secret_key",
    "is_loopback_host",
    "load_settings",
]
TransportName = str
_PLUGIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PluginFilter:
    """DISPATCH_PLUGINS: `a,b` loads only those plugins, `-a,-b` every plugin but those."""

    allow: tuple[str, ...] | None = None  # None: every plugin
    deny: tuple[str, ...] = ()


def _plugin_filter(name: str, raw: str) -> PluginFilter:
    listed = [part.strip() for part in raw.split(",") if part.strip()]
    for entry in listed:
        if not _PLUGIN_NAME.fullmatch(entry.removeprefix("-")):
            raise SettingsError(f"{name}: {entry!r} is not a plugin name")
    deny = tuple(n.removeprefix("-") for n in listed if n.startswith("-"))
    allow = tuple(n for n in listed if not n.startswith("-"))
    if allow and deny:
        raise SettingsError(
            f"{name} must list plugins to load (a,b) or plugins to leave out (-a,-b), "
            f"not both; got {raw!r}"
        )
    return PluginFilter(allow or None, deny)


def _transport(name: str, raw: str) -> str:
    if not raw.replace("_", "").replace("-", "").isalnum():
        raise SettingsError(f"{name} must be a transport name, got {raw!r}")
    return raw


def _secret_key(name: str, raw: str) -> str:
    if len(raw) < 16:
        raise SettingsError(f"{name} must be at least 16 characters long")  # never echoed
    return raw


def _folder(name: str, raw: str) -> Path:
    if not Path(raw).is_dir():
        raise SettingsError(f"{name} must be a folder, {raw!r} is not")
    return Path(raw)


def _log_level(name: str, raw: str) -> str:
    return choice("debug", "info", "warning", "error")(name, raw).upper()


def _number(low: int, high: int, default: int, env: str, doc: str) -> int:
    return setting(env, default, whole_number(low, high), doc)


@dataclass(frozen=True)
class Settings:
    """The core's settings (plugins declare theirs). `environ` is what they were read from."""

    database_url: str | None = setting(
        "DATABASE_URL",
        None,
        url("postgresql", "postgres"),
        "PostgreSQL, `postgresql://…`; unset: `up` starts private servers",
    )
    redis_url: str | None = setting(
        "REDIS_URL",
        None,
        url("redis", "rediss", "unix"),
        "Redis or Valkey, `redis://…`; unset: `up` starts private servers",
    )
    max_emails_per_hour: int = _number(
        1, 1_000_000_000, 50, "MAX_EMAILS_PER_HOUR", "a sender's default hourly limit"
    )
    rate_window_seconds: int = _number(
        1, 86_400 * 7, 3600, "DISPATCH_RATE_WINDOW_SECONDS", "the rate window, in seconds"
    )
    day_seconds: int = _number(
        1,
        86_400 * 31,
        86_400,
        "DISPATCH_DAY_SECONDS",
        "the day of the daily limits (shorter only to try limits quickly)",
    )
    pacing: tuple[str, ...] = setting(
        "DISPATCH_PACING",
        ("fixed_window", "min_gap"),
        names,
        "pacing policies, in order (fixed_window or sliding_window, min_gap, plugins' own)",
    )
    worker_concurrency: int = _number(
        1, 10_000, 200, "WORKER_CONCURRENCY", "sends in flight per process"
    )
    worker_batch_size: int = _number(
        1, 5_000, 100, "WORKER_BATCH_SIZE", "ids claimed from Redis per round trip"
    )
    max_attempts: int = _number(1, 100, 5, "DISPATCH_MAX_ATTEMPTS", "attempts per email")
    retry_base_ms: int = _number(
        1,
        3_600_000,
        5000,
        "DISPATCH_RETRY_BASE_MS",
        "the first retry's delay, doubling each attempt (with jitter), at most an hour",
    )
    lease_seconds: int = _number(
        2,
        3600,
        60,
        "DISPATCH_LEASE_SECONDS",
        "a claimed email not finished (or renewed) in this time goes back to the queue",
    )
    queue_shards: int = _number(
        1, 1024, 1, "DISPATCH_QUEUE_SHARDS", "hash slots the queue spreads over (Redis Cluster)"
    )
    google_client_id: str | None = setting(
        "GOOGLE_CLIENT_ID", None, text, '"Continue with Google": the OAuth client'
    )
    google_client_secret: str | None = setting(
        "GOOGLE_CLIENT_SECRET", None, text, "its secret", secret=True
    )
    oidc_issuer: str | None = setting(
        "OIDC_ISSUER", None, parse_issuer, "any OpenID Connect provider instead of Google (https)"
    )
    oidc_client_id: str | None = setting("OIDC_CLIENT_ID", None, text, "the client at OIDC_ISSUER")
    oidc_client_secret: str | None = setting(
        "OIDC_CLIENT_SECRET", None, text, "its secret", secret=True
    )
    allowed_emails: AllowedEmails | None = setting(
        "DISPATCH_ALLOWED_EMAILS",
        None,
        parse_allowed_emails,
        "who may sign in: addresses, @domain entries, or *; unset: any verified email",
    )  # None: anyone with a verified email
    secret_key: str = setting(
        "DISPATCH_SECRET_KEY",
        "",
        _secret_key,
        "signs session cookies (at least 16 characters); local mode generates one",
        secret=True,
    )
    old_secret_keys: tuple[str, ...] = setting(
        "DISPATCH_OLD_SECRET_KEYS", (), names, "earlier secret keys while rotating", secret=True
    )
    base_url: str | None = setting(
        "DISPATCH_BASE_URL",
        None,
        url("http", "https"),
        "the public URL; default http://DISPATCH_HOST:DISPATCH_PORT",
    )
    data_dir: Path = setting(
        "DISPATCH_DATA_DIR",
        Path("var"),
        path,
        "private servers' data and passwords, the local secret, the dev token",
    )
    transport: TransportName = setting(
        "DISPATCH_TRANSPORT", "capture", _transport, "the transport of senders that name none"
    )
    host: str = setting("DISPATCH_HOST", "127.0.0.1", text, "the address the app listens on")
    port: int = _number(0, 65535, 8080, "DISPATCH_PORT", "the port it listens on")
    plugins_dir: Path | None = setting(
        "DISPATCH_PLUGINS_DIR", None, _folder, "a folder of plugin modules to load"
    )
    plugins: PluginFilter = setting(
        "DISPATCH_PLUGINS",
        PluginFilter(),
        _plugin_filter,
        "which plugins load: a,b only those; -a,-b all but those; unset: all",
    )
    log_level: str = setting(
        "DISPATCH_LOG_LEVEL", "INFO", _log_level, "debug, info, warning or error"
    )
    log_format: str = setting(
        "DISPATCH_LOG_FORMAT", "text", choice("text", "json"), "text, or json (one per line)"
    )
    redis_cluster: bool = setting(
        "DISPATCH_REDIS_CLUSTER", False, boolean, "REDIS_URL is a node of a Redis Cluster"
    )
    # Limits on what one request may carry (docs/operations.md, "Limits").
    max_upload_bytes: int = _number(
        1024,
        1024**3,
        64 * 1024**2,
        "DISPATCH_MAX_UPLOAD_BYTES",
        "body cap of the schedule and Compose routes (CSV uploads)",
    )
    max_body_bytes: int = _number(
        1024, 1024**3, 1024**2, "DISPATCH_MAX_BODY_BYTES", "body cap of every other route"
    )
    max_recipients: int = _number(
        1, 100_000_000, 1_000_000, "DISPATCH_MAX_RECIPIENTS", "recipients per campaign"
    )
    max_upload_lines: int = _number(
        1,
        200_000_000,
        1_500_000,
        "DISPATCH_MAX_UPLOAD_LINES",
        "CSV lines or JSON list entries per request",
    )
    allow_private_targets: bool | None = setting(
        "DISPATCH_ALLOW_PRIVATE_TARGETS",
        None,
        boolean,
        "senders may connect to private addresses; unset: only in local mode",
    )  # None: only in local mode (loopback, no OIDC)
    dev_login: bool | None = setting(
        "DISPATCH_DEV_LOGIN",
        None,
        boolean,
        "the password-less dev login; unset: only in local mode; true: on any bind",
    )  # None: only in local mode; True: opted in on any bind
    # What these were read from: plugins parse their own settings from it (`settings_of`).
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def plugins_allow(self) -> tuple[str, ...] | None:
        return self.plugins.allow

    @property
    def plugins_deny(self) -> tuple[str, ...]:
        return self.plugins.deny

    def with_environ(self, **variables: str) -> Settings:
        """These settings with `variables` added to their environment (plugins read it)."""
        return replace(self, environ={**self.environ, **variables})

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


def read_environ(read_dotenv: bool = True) -> dict[str, str]:
    """os.environ over the `.env` file of the working folder (when there is one)."""
    env: dict[str, str] = {}
    if read_dotenv and Path(".env").is_file():
        from dotenv import dotenv_values

        env.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    env.update(os.environ)
    return env


def load_settings(
    environ: Mapping[str, str] | None = None, *, read_dotenv: bool = True
) -> Settings:
    """Build Settings from `environ` (default: os.environ plus `.env` in the working folder).

    Plugins' own settings are read from the same mapping (`Settings.environ`) and checked
    when the plugin manager is built (`plugins.get_plugin_manager`).
    """
    env = read_environ(read_dotenv) if environ is None else dict(environ)
    settings = replace(read_settings(Settings, env), environ=env)
    check_login(settings)
    from .consent.settings import ConsentSettings  # checked at start like the core's own

    settings_of(ConsentSettings, settings)
    from .consent.verp import VerpSettings  # DISPATCH_BOUNCE_DOMAIN(S), checked likewise

    settings_of(VerpSettings, settings)
    return settings


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

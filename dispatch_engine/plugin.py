"""Everything a plugin imports: `from dispatch_engine.plugin import hookimpl, TransportSpec, …`.

The built-in plugins (dispatch_engine/builtins/) use only these names; docs/plugins.md
shows how. Anything else in the package may change without notice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from redis.asyncio import Redis

from . import outbound, weekly
from .auth import DEV_EMAIL, AuthContext, AuthError, AuthProviderSpec, LoginIdentity
from .config import Settings
from .consent import arf, dsn, verp  # bounce and complaint reports, VERP return paths
from .consent.addresses import AddressError, normalize_address
from .consent.feedback import Feedback, FeedbackEvent, FeedbackKind, FeedbackResult
from .consent.reply_intake import ReplyIntake, ReplyMailbox, Taken  # reply mailboxes
from .hookspecs import hookimpl
from .login_config import GOOGLE_ISSUER, OidcClient
from .pacing import (
    BuiltinLimit,
    CampaignLimits,
    PacingDecision,
    PacingEmail,
    PacingPolicy,
    PacingPolicySpec,
    PacingRequest,
)
from .setting import (
    SettingsError,
    boolean,
    ca_file,
    choice,
    names,
    read_settings,
    setting,
    settings_of,
    text,
    url,
    whole_number,
)
from .transport import (
    OutgoingMessage,
    PermanentError,
    PermanentReply,
    SenderAuthError,
    SenderRateLimitedError,
    SendResult,
    TransientError,
    Transport,
    TransportContext,
    TransportError,
    TransportSpec,
)
from .web.responses import HttpError
from .weekly import WeeklyWindow

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DEV_EMAIL",
    "GOOGLE_ISSUER",
    "AddressError",
    "AuthContext",
    "AuthError",
    "AuthProviderSpec",
    "BuiltinLimit",
    "CampaignLimits",
    "Feedback",
    "FeedbackEvent",
    "FeedbackKind",
    "FeedbackResult",
    "HttpError",
    "LoginIdentity",
    "OidcClient",
    "OutgoingMessage",
    "PacingDecision",
    "PacingEmail",
    "PacingPolicy",
    "PacingPolicySpec",
    "PacingRequest",
    "PermanentError",
    "PermanentReply",
    "ReplyIntake",
    "ReplyMailbox",
    "SendResult",
    "SenderAuthError",
    "SenderRateLimitedError",
    "Settings",
    "SettingsError",
    "Taken",
    "TransientError",
    "Transport",
    "TransportContext",
    "TransportError",
    "TransportSpec",
    "WeeklyWindow",
    "arf",
    "boolean",
    "bounce_token_dispatch",
    "ca_file",
    "choice",
    "dsn",
    "feedback_of",
    "hookimpl",
    "names",
    "normalize_address",
    "outbound",
    "read_settings",
    "redis_of",
    "reply_intake_of",
    "roles_of",
    "setting",
    "settings_of",
    "text",
    "url",
    "verp",
    "weekly",
    "whole_number",
]


def feedback_of(app: web.Application) -> Feedback:
    """The core's one feedback handler, for a plugin's routes and readers (started apps)."""
    from .web.app_keys import FEEDBACK  # the app's keys import most of the core

    return app[FEEDBACK]


def bounce_token_dispatch(app: web.Application, token: str) -> int | None:
    """The dispatch a genuine bounce token (VERP, a provider's custom argument) names."""
    from .consent.tokens import DispatchTokens, Purpose
    from .web.app_keys import SETTINGS

    return DispatchTokens.for_settings(app[SETTINGS], Purpose.BOUNCE).read(token.strip())


def roles_of(app: web.Application) -> frozenset[str]:
    """The roles this process runs (`api`, `worker`, `sweeper`)."""
    from .web.app_keys import ROLES

    return app[ROLES]


def redis_of(app: web.Application) -> Redis:
    """The process's Redis client (started apps), e.g. for a lock one process holds."""
    from .web.app_keys import REDIS

    return app[REDIS]


def reply_intake_of(app: web.Application) -> ReplyIntake:
    """Where a reply mailbox reader hands each message (started apps; docs/replies.md)."""
    from .secretbox import secret_box
    from .web.app_keys import FEEDBACK, HOOKS, SETTINGS, STORE

    settings = app[SETTINGS]
    return ReplyIntake(
        app[STORE],
        app[FEEDBACK],
        app[HOOKS],
        secret_box(settings),
        allow_private=settings.private_targets_allowed,
    )

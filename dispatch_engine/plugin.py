"""Everything a plugin imports: `from dispatch_engine.plugin import hookimpl, TransportSpec, …`.

The built-in plugins (dispatch_engine/builtins/) use only these names; docs/plugins.md
shows how. Anything else in the package may change without notice.
"""

from __future__ import annotations

from aiohttp import web

from . import outbound, weekly
from .auth import DEV_EMAIL, AuthContext, AuthError, AuthProviderSpec, LoginIdentity
from .config import Settings
from .consent.feedback import Feedback, FeedbackEvent, FeedbackKind, FeedbackResult
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
    SenderAuthError,
    SenderRateLimitedError,
    SendResult,
    TransientError,
    Transport,
    TransportContext,
    TransportError,
    TransportSpec,
)
from .weekly import WeeklyWindow

__all__ = [
    "DEV_EMAIL",
    "GOOGLE_ISSUER",
    "AuthContext",
    "AuthError",
    "AuthProviderSpec",
    "BuiltinLimit",
    "CampaignLimits",
    "Feedback",
    "FeedbackEvent",
    "FeedbackKind",
    "FeedbackResult",
    "LoginIdentity",
    "OidcClient",
    "OutgoingMessage",
    "PacingDecision",
    "PacingEmail",
    "PacingPolicy",
    "PacingPolicySpec",
    "PacingRequest",
    "PermanentError",
    "SendResult",
    "SenderAuthError",
    "SenderRateLimitedError",
    "Settings",
    "SettingsError",
    "TransientError",
    "Transport",
    "TransportContext",
    "TransportError",
    "TransportSpec",
    "WeeklyWindow",
    "boolean",
    "ca_file",
    "choice",
    "feedback_of",
    "hookimpl",
    "outbound",
    "read_settings",
    "setting",
    "settings_of",
    "text",
    "url",
    "weekly",
    "whole_number",
]


def feedback_of(app: web.Application) -> Feedback:
    """The core's one feedback handler, for a plugin's routes and readers (started apps)."""
    from .web.app_keys import FEEDBACK  # the app's keys import most of the core

    return app[FEEDBACK]

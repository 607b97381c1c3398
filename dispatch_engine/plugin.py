"""Everything a plugin imports: `from dispatch_engine.plugin import hookimpl, TransportSpec, …`.

The built-in plugins (dispatch_engine/builtins/) use only these names; docs/plugins.md
shows how. Anything else in the package may change without notice.
"""

from __future__ import annotations

from . import outbound
from .auth import DEV_EMAIL, AuthContext, AuthError, AuthProviderSpec, LoginIdentity
from .config import Settings
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

__all__ = [
    "DEV_EMAIL",
    "GOOGLE_ISSUER",
    "AuthContext",
    "AuthError",
    "AuthProviderSpec",
    "BuiltinLimit",
    "CampaignLimits",
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
    "boolean",
    "ca_file",
    "choice",
    "hookimpl",
    "outbound",
    "read_settings",
    "setting",
    "settings_of",
    "text",
    "url",
    "whole_number",
]

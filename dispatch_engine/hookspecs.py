"""Every hook a Dispatch Engine plugin can implement. The docstrings are the plugin manual.

A plugin is a module (or object) with functions decorated by `dispatch_engine.hookimpl`.
Hooks may be plain functions or coroutines: callers await whatever a hook returns.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .auth import AuthProviderSpec
    from .config import Settings
    from .pacing import PacingPolicySpec
    from .transport import TransportSpec

hookspec = pluggy.HookspecMarker("dispatch_engine")
hookimpl = pluggy.HookimplMarker("dispatch_engine")


# ---- registration: called once per process when it starts ----


@hookspec
def register_transports(settings: Settings) -> list[TransportSpec] | None:
    """Return the transports this plugin offers, as `TransportSpec(name, factory)`.

    A sender names its transport; the worker calls `factory(TransportContext)` once per sender
    and reuses the transport (and its connections). Called in every process that sends.
    """


@hookspec
def register_pacing_policies(settings: Settings) -> list[PacingPolicySpec] | None:
    """Return pacing policies, as `PacingPolicySpec(name, factory)`.

    A policy decides when a sender may send its next emails (hourly limits, gaps). Called in
    every worker process.
    """


@hookspec
def register_auth_providers(settings: Settings) -> list[AuthProviderSpec] | None:
    """Return the dashboard's login providers, as `AuthProviderSpec(name, label, start, …)`.

    Each becomes a button labelled `label` on the login page. Pressing it POSTs (CSRF-checked)
    to `/auth/<name>/start`, which calls `start(request, context)`: return a `LoginIdentity`
    to sign the user in at once, or a response (usually a redirect to an identity provider).
    The provider sends the browser back to `context.callback_url` (`/auth/<name>/callback`),
    which calls `callback(request, context)`; it returns the verified `LoginIdentity` or
    raises `AuthError(message)`, shown on the login page. `context.flows` keeps one-time
    state (PKCE verifier, nonce) server-side, bound to the browser. The core links the
    identity to a user (by provider + subject, else by verified email), then starts the
    session. Return an empty list when the provider is not configured. Called once per API
    process; may be a coroutine.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the `dispatch-engine` command group `cli`."""


# ---- lifecycle ----


@hookspec
def startup(settings: Settings, app: Any) -> Any:
    """Called when a process has connected to PostgreSQL and Redis, before it serves or sends.

    `app` is the aiohttp application. May be a coroutine. An exception stops the process.
    """


@hookspec
def shutdown(settings: Settings, app: Any) -> Any:
    """Called when a process stops, after workers drained. May be a coroutine."""


# ---- events: called by the worker process after the fact; an exception is logged ----


@hookspec
def dispatch_sent(dispatch_id: int, campaign_id: int, recipient: str, message_id: str) -> Any:
    """An email was accepted by its transport and recorded as sent. May be a coroutine."""


@hookspec
def dispatch_failed(dispatch_id: int, campaign_id: int, recipient: str, error: str) -> Any:
    """An email failed for good (permanent error or too many attempts). May be a coroutine."""


@hookspec
def sender_limited(sender_id: int, resume_at_ms: int, reason: str) -> Any:
    """A sender was parked by its pacing policy or its provider until `resume_at_ms`."""

"""Every hook a Dispatch Engine plugin can implement. The docstrings are the plugin manual.

A plugin is a module (or object) with functions decorated by `dispatch_engine.hookimpl`; an
implementation takes any subset of a hook's arguments, by name. Every hook may be a plain
function or a coroutine (`async def`): callers await whatever a hook returns. Implementations
run in pluggy's order (the last registered first, `tryfirst` before, `trylast` after); the
built-in plugins are `trylast`, so a plugin that registers a transport, policy or provider of
the same name replaces the built-in one. The core calls them through `hooks.Hooks`, which
calls each `register_*` hook once per process and keeps its answer. Processes: `api` serves
the REST API and dashboard, `worker` sends, `sweeper` recovers; `dispatch-engine run` may
run any of them in one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Awaitable

    import click
    import jinja2
    from aiohttp import web

    from .auth import AuthProviderSpec
    from .config import Settings
    from .pacing import PacingPolicySpec
    from .transport import TransportSpec

hookspec = pluggy.HookspecMarker("dispatch_engine")
hookimpl = pluggy.HookimplMarker("dispatch_engine")


# ---- registration: called once per process when it starts ----


@hookspec
def register_transports(settings: Settings) -> list[TransportSpec] | None:
    """Return the transports this plugin offers, as a list of `TransportSpec(name, factory)`.

    A sender names its transport (`DISPATCH_TRANSPORT` for default senders); the worker calls
    `factory(TransportContext)` once per sender and reuses the transport (and its
    connections). `send(message)` returns a `SendResult` or raises `TransientError`,
    `PermanentError`, `SenderRateLimitedError` or `SenderAuthError`. Called once at start
    in every process (the api process offers the names to `POST /api/senders`, the worker
    sends), and by `dispatch-engine plugins`. Return None or `[]` to offer nothing.
    """


@hookspec
def register_pacing_policies(settings: Settings) -> list[PacingPolicySpec] | None:
    """Return pacing policies, as a list of `PacingPolicySpec(name, factory)`.

    `factory(redis, settings)` makes a policy whose `acquire(PacingRequest)` says how many of a
    sender's claimed emails may go now and, when not all, until when the sender is parked
    (`PacingDecision`). Only the policies named in `DISPATCH_PACING` are made, in that order.
    Called once at start in every process (the api process reports usage in `/api/stats`),
    and by `dispatch-engine plugins`.
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
    state (PKCE verifier, nonce) server-side, bound to the browser. The core refuses an
    identity whose `email_verified` is false or one DISPATCH_ALLOWED_EMAILS does not permit,
    links the others to a user (by provider + subject, else by email), then starts the
    session. Returns an empty list when the provider is not configured.
    Called once per API process when it starts; may be a coroutine.
    """


@hookspec
def register_routes(settings: Settings) -> list[web.AbstractRouteDef] | None:
    """Return aiohttp routes to add to the app, e.g. a `web.RouteTableDef()` or `[web.get(…)]`.

    Called once at start in each api process, before it serves; core routes come first, so a
    plugin cannot shadow them. `request.app` holds the shared objects (under the keys of
    `dispatch_engine.web.app_keys`). Routes under `/api/` take a bearer token or a dashboard
    session (`dispatch_engine.web.middleware.current_user(request)` is the user); other paths
    are dashboard pages: signed-in visitors only, and unsafe methods need the CSRF token.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the `dispatch-engine` click group `cli` (`cli.add_command(...)`).

    Called in the CLI process when `dispatch-engine` starts, before it parses its arguments.
    Returns nothing.
    """


@hookspec
def prepare_jinja2_environment(env: jinja2.Environment, settings: Settings) -> None:
    """Change the dashboard's Jinja environment in place: add filters, globals, tests.

    Called once at start in each api process, after the dashboard's own filters are set and
    before the first page renders. Returns nothing.
    """


# ---- lifecycle ----


@hookspec
def startup(settings: Settings, app: web.Application) -> Awaitable[None] | None:
    """A process has connected to PostgreSQL and Redis; it has not served or sent yet.

    Called once in every process (api, worker, sweeper). `app` is the aiohttp application:
    `app[ROLES]` says which roles run here, and its shared objects are under the keys of
    `dispatch_engine.web.app_keys`. Returns nothing. An exception stops the process with a
    one-line message naming the plugin.
    """


@hookspec
def shutdown(settings: Settings, app: web.Application) -> Awaitable[None] | None:
    """A process is stopping: its workers have drained; PostgreSQL and Redis are still open.

    Called once in every process whose `startup` succeeded. Returns nothing; an exception is
    reported and the process still stops.
    """


# ---- events: called in the worker process after the fact ----
# They run inline in the worker's send path: keep them quick, and hand slow work (HTTP calls)
# to a task, as dispatch_engine/builtins/notify.py does. An exception is logged and never
# loses an email.
# Delivery is at least once, so an event may (rarely) repeat after a crash.


@hookspec
def dispatch_sent(
    dispatch_id: int, campaign_id: int, recipient: str, message_id: str, settings: Settings
) -> Awaitable[None] | None:
    """An email was accepted by its transport and recorded as sent. Returns nothing.

    `message_id` is the email's Message-ID header (`<…>`). Called in the worker process
    that sent it, after the result is committed to PostgreSQL.
    """


@hookspec
def dispatch_failed(
    dispatch_id: int, campaign_id: int, recipient: str, error: str, settings: Settings
) -> Awaitable[None] | None:
    """An email failed for good: a permanent error, or too many transient ones. Returns nothing.

    `error` is the reason kept on the email (the server's answer). Called in the worker
    process that tried it, after the failure is committed.
    """


@hookspec
def sender_limited(
    sender_id: int, resume_at_ms: int, reason: str, settings: Settings
) -> Awaitable[None] | None:
    """A sender was parked until `resume_at_ms` (unix ms). Returns nothing.

    Called in the worker process when a pacing policy holds emails back for more than a
    second (`reason` names the limit) or the provider answered "too many"
    (`SenderRateLimitedError`). The held emails stay queued, in order.
    """


@hookspec
def sender_parked(sender_id: int, reason: str, settings: Settings) -> Awaitable[None] | None:
    """A sender was parked because its server keeps refusing its account. Returns nothing.

    `reason` holds the server's reply (e.g. `535 5.7.8 Authentication credentials invalid`).
    Called once per parking, in the worker process whose login attempt parked it (after the
    parking is committed to PostgreSQL). Its emails wait, keeping their attempts, until the
    sender's settings change or a user resumes it (`POST /api/senders/{id}/resume`).
    """


@hookspec
def campaign_completed(
    campaign_id: int, owner_id: int, settings: Settings
) -> Awaitable[None] | None:
    """A campaign has nothing left to send: every email is sent, failed or cancelled.

    Called once per campaign, in the worker process that recorded its last result, after
    the `dispatch_sent`/`dispatch_failed` events of that result; or in the api process when
    a paused campaign whose last emails finished meanwhile is resumed. Returns nothing.
    Not called for a cancelled campaign.
    """


# ---- feedback: called after the core's feedback handler recorded a new report ----
# In the process that read the report: the worker for a refusal at RCPT or DATA, the api
# process for a provider webhook or a one-click unsubscribe, the reader's for a bounce
# mailbox. A report read twice fires nothing the second time.


@hookspec
def dispatch_bounced(
    dispatch_id: int, campaign_id: int, recipient: str, kind: str, detail: str, settings: Settings
) -> Awaitable[None] | None:
    """A bounce of an email was recorded. Returns nothing.

    `kind` is `hard` (the address is bad: it is suppressed and the email is `bounced`) or
    `soft` (a full mailbox and the like: counted; DISPATCH_SOFT_BOUNCE_LIMIT of them within
    DISPATCH_SOFT_BOUNCE_DAYS suppress the address). `detail` is the server's or the report's
    diagnostic. Called in the worker process for a permanent refusal at RCPT or DATA, and in
    the process that read a DSN or a provider's event (api for webhooks), after the commit.
    """


@hookspec
def dispatch_complained(
    dispatch_id: int, campaign_id: int, recipient: str, detail: str, settings: Settings
) -> Awaitable[None] | None:
    """A recipient reported an email as spam (an ARF report or a provider's complaint event).

    The email is `complained` and the address suppressed. Returns nothing. Called in the
    process that read the report (the api process for provider webhooks, the IMAP reader's
    for ARF), after the commit.
    """


@hookspec
def campaign_paused(
    campaign_id: int, owner_id: int, reason: str, settings: Settings
) -> Awaitable[None] | None:
    """A campaign paused itself: its hard-bounce or complaint rate passed its threshold
    (DISPATCH_PAUSE_BOUNCE_PERCENT, DISPATCH_PAUSE_COMPLAINT_PERCENT, after
    DISPATCH_PAUSE_MIN_SENT sends). Returns nothing.

    `reason` is the one line the API (`paused_reason`) and the campaign page show. Called
    once per pause, in the process whose feedback pushed the rate over (the worker process
    for refusals at RCPT or DATA, api for webhooks), after the pause is committed. Not
    called when a user pauses a campaign.
    """


# ---- replies (docs/replies.md) ----


@hookspec
def reply_received(
    dispatch_id: int,
    campaign_id: int,
    recipient: str,
    from_address: str,
    snippet: str,
    settings: Settings,
) -> Awaitable[None] | None:
    """A person replied to an email (not an auto-reply, not a bounce). Returns nothing.

    `recipient` is the email's recipient, `from_address` the reply's author (often the
    same), `snippet` its first lines as plain text (at most 300 characters, quoted text left
    out). Called once per reply, after its feedback event is recorded, in the process whose
    sweeper role read it from the sender's reply mailbox (never in an api or worker process
    that lacks the sweeper role).
    """

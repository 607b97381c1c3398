"""Provider webhooks: bounces and complaints reported by Amazon SES (through SNS), SendGrid,
Mailgun and Postmark, each at `POST /hooks/feedback/<provider>` (docs/provider-webhooks.md).

A provider is mounted only when its settings are set (`settings.py`); each request is
verified as its provider documents (`sns.py`, `sendgrid.py`, `mailgun.py`, `postmark.py`),
and its events go to the core feedback handler through `routes.py`.
"""

from __future__ import annotations

from aiohttp import web

from dispatch_engine.plugin import Settings, hookimpl

from .routes import routes_for
from .settings import ProviderWebhookSettings

SETTINGS = ProviderWebhookSettings  # checked when the process starts


@hookimpl(trylast=True)
def register_routes(settings: Settings) -> list[web.AbstractRouteDef]:
    return routes_for(settings)

"""`dispatch-engine up`: everything on one machine, private servers unless URLs are set."""

from __future__ import annotations

import asyncio

import click

from ..app import create_app
from ..auth import DEV_EMAIL
from ..bootstrap import dev_token, migrate_database, servers_for
from ..config import ensure_secret_key
from .context import CommandContext
from .serve import run_forever, serve


def banner(url: str, token: str, *, local: bool, transport: str) -> str:
    """What `up` prints once it serves: where, the dev token, and a first request to try."""
    return (
        f"\nDispatch Engine is up ({'local mode, ' if local else ''}"
        f"transport: {transport}).\n"
        f"  Dashboard:  {url}/\n"
        f"  API token:  {token}  (user {DEV_EMAIL})\n"
        f"  Try it:\n"
        f"    curl -X POST {url}/api/emails/schedule \\\n"
        f"      -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
        f'      -d \'{{"subject": "Hello", "body": "Hi {{{{ email }}}}!", '
        f'"recipients": ["ada@example.com", "alan@example.com"]}}\'\n'
        f"    curl -H 'Authorization: Bearer {token}' {url}/api/inbox\n"
        f"  Stop with Ctrl-C.\n"
    )


@click.command(name="up")
@click.pass_obj
def up_command(obj: CommandContext) -> None:
    """Start everything locally: private PostgreSQL + Redis (unless URLs are set), all roles."""
    settings = obj.settings
    local = not (settings.database_url or settings.redis_url)
    # A second `up` on the same folder must not attach: the private servers refuse it.
    with servers_for(settings, attach=False) as settings:
        settings = ensure_secret_key(settings)
        applied = asyncio.run(migrate_database(settings))
        if applied:
            click.echo(f"Applied migrations: {', '.join(applied)}")
        token = asyncio.run(dev_token(settings))

        def ready(port: int) -> None:
            url = settings.base_url or f"http://{settings.host}:{port}"
            click.echo(banner(url, token, local=local, transport=settings.transport))

        run_forever(serve(create_app(settings), settings.host, settings.port, ready))

"""`dispatch-engine run` and `migrate`: the roles and the schema, against configured servers."""

from __future__ import annotations

import asyncio

import click

from ..app import ALL_ROLES, create_app
from ..bootstrap import migrate_database, servers_for
from ..config import ensure_secret_key
from .context import CommandContext
from .serve import run_forever, serve


@click.command(name="run")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(sorted(ALL_ROLES)),
    help="Run only these roles (repeatable). Default: all.",
)
@click.option(
    "--migrate/--no-migrate",
    "do_migrate",
    default=True,
    show_default=True,
    help="Apply pending migrations before starting.",
)
@click.pass_obj
def run_command(obj: CommandContext, roles: tuple[str, ...], do_migrate: bool) -> None:
    """Run API, worker and/or sweeper roles against DATABASE_URL and REDIS_URL."""
    with servers_for(obj.settings, may_start=False) as settings:
        settings = ensure_secret_key(settings)
        if do_migrate:
            asyncio.run(migrate_database(settings))
        chosen = frozenset(roles or ALL_ROLES)

        def ready(port: int) -> None:
            click.echo(f"Running {', '.join(sorted(chosen))} on http://{settings.host}:{port}")

        run_forever(serve(create_app(settings, chosen), settings.host, settings.port, ready))


@click.command(name="migrate")
@click.pass_obj
def migrate_command(obj: CommandContext) -> None:
    """Apply pending database migrations (safe to run from several processes)."""
    with servers_for(obj.settings) as settings:
        applied = asyncio.run(migrate_database(settings))
    click.echo(f"Applied: {', '.join(applied)}" if applied else "The schema is up to date.")

"""The `dispatch-engine` command: up, run, migrate, token create, plugins."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import orjson
import pluggy
from aiohttp import web

from . import __version__
from .app import ALL_ROLES, create_app
from .auth import DEV_EMAIL
from .cli_senders import sender
from .cli_tokens import token
from .config import Settings, SettingsError, ensure_secret_key, load_settings
from .db import create_pool
from .embedded import EmbeddedError, EmbeddedServers, running_urls
from .logs import setup_logging
from .migrate import SchemaBehindError, migrate
from .plugins import (
    PluginError,
    call_all,
    disabled_plugins,
    get_plugin_manager,
    plugin_report,
)
from .store import Store

log = logging.getLogger("dispatch_engine")
USER_ERRORS = (SettingsError, EmbeddedError, SchemaBehindError, PluginError)
HELP_ARGS = frozenset({"-h", "--help", "--version"})


@dataclass
class Context:
    settings: Settings
    plugins: pluggy.PluginManager


@contextlib.contextmanager
def servers_for(settings: Settings) -> Iterator[Settings]:
    """For short commands: configured servers, a running `up`'s, or private ones meanwhile."""
    with _servers(settings, may_start=True) as resolved:
        yield resolved


@contextlib.contextmanager
def _servers(settings: Settings, *, may_start: bool, attach: bool = True) -> Iterator[Settings]:
    """Settings with URLs: the configured ones, a running `up`'s, or private servers."""
    if settings.database_url and settings.redis_url:
        yield settings
        return
    if bool(settings.database_url) != bool(settings.redis_url):
        missing = "REDIS_URL" if settings.database_url else "DATABASE_URL"
        raise SettingsError(f"{missing} must be set too (set both, or neither for local mode)")
    urls = running_urls(settings.data_dir) if attach else None
    if urls is not None:
        yield settings.with_urls(urls.database_url, urls.redis_url)
        return
    if not may_start:
        raise SettingsError(
            "DATABASE_URL and REDIS_URL are not set and no `dispatch-engine up` runs on "
            f"DISPATCH_DATA_DIR={settings.data_dir}"
        )
    with EmbeddedServers(settings.data_dir) as servers:
        yield settings.with_urls(servers.urls.database_url, servers.urls.redis_url)


async def _migrate(settings: Settings) -> list[str]:
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            return await migrate(conn)
    finally:
        await pool.close()


async def create_api_token(
    settings: Settings, email: str, name: str, expires_in_s: int | None = None
) -> str:
    """A new bearer token for EMAIL (the user and its default sender are made if new)."""
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        store = Store(pool)
        user = await store.ensure_user(email)
        await store.ensure_default_sender(
            user, transport=settings.transport, hourly_limit=settings.max_emails_per_hour
        )
        made = await store.issue_token(user.id, name, expires_in_s=expires_in_s)
        assert made is not None  # the operator's CLI has no per-user cap
        return made.token
    finally:
        await pool.close()


async def _dev_token(settings: Settings) -> str:
    """The local dev user's token, kept in the data folder and reused while valid.

    The dev user's default sender follows this start's DISPATCH_TRANSPORT and
    MAX_EMAILS_PER_HOUR, so changing them and restarting `up` does what one expects.
    """
    assert settings.database_url
    path = settings.data_dir / "dev_token"
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        store = Store(pool)
        user = await store.ensure_user(DEV_EMAIL, "Dev User")
        sender = await store.ensure_default_sender(
            user, transport=settings.transport, hourly_limit=settings.max_emails_per_hour
        )
        await store.save_sender(
            user.id,
            sender.id,
            {"transport": settings.transport, "hourly_limit": settings.max_emails_per_hour},
        )
        if path.exists() and await store.user_for_token(path.read_text().strip()):
            return path.read_text().strip()
        token = await store.create_token(user.id, "dispatch-engine up")
    finally:
        await pool.close()
    path.write_text(token)
    path.chmod(0o600)
    return token


def run_forever(main: Coroutine[Any, Any, None]) -> None:
    """Run a long-lived process on uvloop when it is installed (the `uvloop` extra)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve(
    app: web.Application, host: str, port: int, on_ready: Callable[[int], None]
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down in order (workers drain, pools close)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise SettingsError(f"DISPATCH_PORT {port} on {host} cannot be used: {exc}") from None
        bound = runner.addresses[0][1] if runner.addresses else port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        on_ready(bound)
        await stop.wait()
        click.echo("Stopping: finishing in-flight sends…", err=True)
    finally:
        await runner.cleanup()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dispatch-engine")
@click.option(
    "--plugins-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Load every *.py plugin in this folder too (instead of DISPATCH_PLUGINS_DIR).",
)
def cli(plugins_dir: Path | None) -> None:
    """Dispatch Engine: schedule and send email campaigns."""


def _plugins_dir_arg(args: list[str]) -> Path | None:
    """`--plugins-dir`, read before click parses: its plugins may add commands."""
    for i, arg in enumerate(args):
        if arg == "--plugins-dir" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--plugins-dir="):
            value = arg.partition("=")[2]
        elif arg.startswith("-"):
            continue
        else:
            return None  # the command; what follows is its own
        if not Path(value).is_dir():
            raise SettingsError(f"--plugins-dir must be a folder, {value!r} is not")
        return Path(value)
    return None


@cli.command()
@click.pass_obj
def up(obj: Context) -> None:
    """Start everything locally: private PostgreSQL + Redis (unless URLs are set), all roles."""
    settings = obj.settings
    local = not (settings.database_url or settings.redis_url)
    # A second `up` on the same folder must not attach: the private servers refuse it.
    with _servers(settings, may_start=True, attach=False) as settings:
        settings = ensure_secret_key(settings)
        applied = asyncio.run(_migrate(settings))
        if applied:
            click.echo(f"Applied migrations: {', '.join(applied)}")
        token = asyncio.run(_dev_token(settings))

        def ready(port: int) -> None:
            url = settings.base_url or f"http://{settings.host}:{port}"
            click.echo(
                f"\nDispatch Engine is up ({'local mode, ' if local else ''}"
                f"transport: {settings.transport}).\n"
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

        run_forever(serve(create_app(settings), settings.host, settings.port, ready))


@cli.command()
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
def run(obj: Context, roles: tuple[str, ...], do_migrate: bool) -> None:
    """Run API, worker and/or sweeper roles against DATABASE_URL and REDIS_URL."""
    with _servers(obj.settings, may_start=False) as settings:
        settings = ensure_secret_key(settings)
        if do_migrate:
            asyncio.run(_migrate(settings))
        chosen = frozenset(roles or ALL_ROLES)

        def ready(port: int) -> None:
            click.echo(f"Running {', '.join(sorted(chosen))} on http://{settings.host}:{port}")

        run_forever(serve(create_app(settings, chosen), settings.host, settings.port, ready))


@cli.command(name="migrate")
@click.pass_obj
def migrate_command(obj: Context) -> None:
    """Apply pending database migrations (safe to run from several processes)."""
    with _servers(obj.settings, may_start=True) as settings:
        applied = asyncio.run(_migrate(settings))
    click.echo(f"Applied: {', '.join(applied)}" if applied else "The schema is up to date.")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins(obj: Context, as_json: bool) -> None:
    """List the loaded plugins: from where, their hooks, what they register."""
    loaded = asyncio.run(plugin_report(obj.plugins, obj.settings))
    if as_json:
        click.echo(orjson.dumps([p.__dict__ for p in loaded], option=orjson.OPT_INDENT_2))
        return
    for p in loaded:
        click.echo(f"{p.name}  ({p.source})  {p.location}\n    hooks: {', '.join(p.hooks)}")
        for kind, names in p.registers.items():
            if names:
                click.echo(f"    {kind.replace('_', ' ')}: {', '.join(names)}")
    disabled = disabled_plugins(obj.plugins)
    if disabled:
        click.echo(f"Left out by DISPATCH_PLUGINS: {', '.join(disabled)}")


cli.add_command(sender)
cli.add_command(token)


def _settings_for(args: list[str]) -> Settings:
    """The environment's settings; help and --version answer even when one is malformed."""
    try:
        return load_settings()
    except SettingsError:
        if not HELP_ARGS.intersection(args):
            raise
        return Settings()


def _plugins_for(settings: Settings, args: list[str]) -> pluggy.PluginManager:
    """The plugins; for help, with their own settings at their defaults if one is malformed."""
    try:
        return get_plugin_manager(settings)
    except SettingsError:
        if not HELP_ARGS.intersection(args):
            raise
        return get_plugin_manager(replace(settings, environ={}))


def main(argv: list[str] | None = None) -> Any:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = _settings_for(args)
        plugins_dir = _plugins_dir_arg(args)
        if plugins_dir is not None:
            settings = replace(settings, plugins_dir=plugins_dir)
        setup_logging(settings.log_level, settings.log_format)
        plugins = _plugins_for(settings, args)
        asyncio.run(call_all(plugins.hook.register_commands, cli=cli))
        return cli.main(
            args=argv,
            prog_name="dispatch-engine",
            standalone_mode=False,
            obj=Context(settings, plugins),
        )
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"dispatch-engine: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)

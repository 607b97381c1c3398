"""The `dispatch-engine` command: the click group, and `main`, the console script's entry.

One command family per module: `up`, `run` (and `migrate`), `token`, `sender`, `plugins`.
How servers are found, migrated and given tokens is `dispatch_engine.bootstrap`'s.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pluggy

from .. import __version__
from ..config import Settings, SettingsError, load_settings
from ..embedded import EmbeddedError
from ..hooks import Hooks
from ..logs import setup_logging
from ..migrate import SchemaBehindError
from ..plugins import PluginError, get_plugin_manager
from .context import CommandContext
from .plugins import plugins_command
from .run import migrate_command, run_command
from .senders import sender_group
from .tokens import token_group
from .up import up_command

# Errors whose message is the whole story: one line, exit 2, no traceback.
USER_ERRORS = (SettingsError, EmbeddedError, SchemaBehindError, PluginError)
HELP_ARGS = frozenset({"-h", "--help", "--version"})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dispatch-engine")
@click.option(
    "--plugins-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Load every *.py plugin in this folder too (instead of DISPATCH_PLUGINS_DIR).",
)
def cli(plugins_dir: Path | None) -> None:
    """Dispatch Engine: schedule and send email campaigns."""


COMMANDS = (up_command, run_command, migrate_command, token_group, sender_group, plugins_command)
for command in COMMANDS:
    cli.add_command(command)


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
        asyncio.run(Hooks(plugins, settings).add_commands(cli))
        return cli.main(
            args=argv,
            prog_name="dispatch-engine",
            standalone_mode=False,
            obj=CommandContext(settings, plugins),
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

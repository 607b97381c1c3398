"""The `dispatch-engine` command: the click group, and `main`, the console script's entry.

One command family per module: `up`, `run` (and `migrate`), `token`, `sender`, `plugins`.
How servers are found, migrated and given tokens is `dispatch_engine.bootstrap`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import pluggy

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
# What click reads to answer a shell's completion request instead of running a command.
COMPLETE_VAR = "_DISPATCH_ENGINE_COMPLETE"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dispatch-engine", prog_name="dispatch-engine")
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


def _only_help(group: click.Group, args: list[str]) -> bool:
    """Whether click answers `args` without running any command: help, the version, a usage
    error or a shell completion. Parsed by click itself, quietly, as the real run will."""
    if os.environ.get(COMPLETE_VAR):
        return True
    command: click.Command = group
    parent: click.Context | None = None
    name, rest = "dispatch-engine", list(args)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            while isinstance(command, click.Group):
                ctx = click.Context(command, info_name=name, parent=parent)
                with ctx.scope(cleanup=False):
                    # A group's own options only: its subcommand's arguments are the rest.
                    rest = click.Command.parse_args(command, ctx, rest)
                    if not rest:
                        return not command.invoke_without_command
                    found, sub, rest = command.resolve_command(ctx, rest)
                if sub is None:
                    return True
                command, name, parent = sub, found or "", ctx
            command.make_context(name, rest, parent=parent)
    except (click.exceptions.Exit, click.ClickException):
        return True  # help or the version printed, or a usage error: nothing runs
    return False


def _environment(args: list[str]) -> tuple[Settings, pluggy.PluginManager, Exception | None]:
    """The settings and plugins; when one is malformed, defaults and the error, so that help
    can still answer (`main` raises the error if a command would run)."""
    error: Exception | None = None
    try:
        settings = load_settings()
        plugins_dir = _plugins_dir_arg(args)
        if plugins_dir is not None:
            settings = replace(settings, plugins_dir=plugins_dir)
    except SettingsError as exc:
        settings, error = Settings(), exc
    try:
        plugins = get_plugin_manager(settings)
    except (SettingsError, PluginError) as exc:
        error = error or exc
        plugins = get_plugin_manager(Settings())  # every setting at its default
    return settings, plugins, error


def main(argv: list[str] | None = None) -> Any:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings, plugins, error = _environment(args)
        setup_logging(settings.log_level, settings.log_format)
        asyncio.run(Hooks(plugins, settings).add_commands(cli))
        if error is not None and not _only_help(cli, args):
            raise error
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

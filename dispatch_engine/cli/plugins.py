"""`dispatch-engine plugins`: what is loaded, from where, and what it registers."""

from __future__ import annotations

import asyncio

import click
import orjson

from ..plugins import disabled_plugins, plugin_report
from .context import CommandContext


@click.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins_command(obj: CommandContext, as_json: bool) -> None:
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

"""`dispatch-engine token …`: create, list and revoke API tokens (see docs/operations.md)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TypeVar

import click
import orjson

from .. import tokens
from ..bootstrap import command_pool, create_api_token, migrate_database, servers_for
from ..config import Settings
from ..store import Store
from ..store.accounts import ApiToken
from ..web.presenters import token_json
from .context import CommandContext

T = TypeVar("T")


@contextlib.contextmanager
def _migrated(obj: CommandContext) -> Iterator[Settings]:
    """The configured servers (or a running `up`'s, or private ones meanwhile), migrated."""
    with servers_for(obj.settings) as settings:
        asyncio.run(migrate_database(settings))
        yield settings


async def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    async with command_pool(settings) as pool:
        return await work(Store(pool))


@click.group(name="token")
def token_group() -> None:
    """Manage API tokens."""


def _token_id(raw: str) -> int:
    token_id = tokens.parse_id(raw)
    if token_id is None:
        raise ValueError("must be a token id (a whole number, see `token list`)")
    return token_id


def _option_value(check: Callable[[str], T], param: str) -> Callable[..., T | None]:
    def convert(_ctx: click.Context, _param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return check(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=param) from None

    return convert


@token_group.command(name="create")
@click.option("--email", required=True, help="The user the token acts for (created if new).")
@click.option(
    "--name",
    default="cli",
    show_default=True,
    callback=_option_value(tokens.check_name, "--name"),
    help="A label for the token.",
)
@click.option(
    "--expires-in",
    callback=_option_value(tokens.parse_duration, "--expires-in"),
    help="Refuse the token after this long: 90m, 12h, 30d, 2w (default: never).",
)
@click.pass_obj
def token_create(obj: CommandContext, email: str, name: str, expires_in: int | None) -> None:
    """Print a new API token for EMAIL (use it as `Authorization: Bearer <token>`)."""
    if "@" not in email:
        raise click.BadParameter("must be an email address", param_hint="--email")
    with _migrated(obj) as settings:
        click.echo(asyncio.run(create_api_token(settings, email, name, expires_in)))


@token_group.command(name="list")
@click.option("--email", help="Only this user's tokens.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def token_list(obj: CommandContext, email: str | None, as_json: bool) -> None:
    """List tokens, newest first: id, first characters, status, user, name, dates (no secrets)."""

    async def work(store: Store) -> list[ApiToken] | None:
        if email is None:
            return await store.tokens_of(None, tokens.LIST_LIMIT)
        user_id = await store.user_id_by_email(email)
        return None if user_id is None else await store.tokens_of(user_id, tokens.LIST_LIMIT)

    with _migrated(obj) as settings:
        found = asyncio.run(_with_store(settings, work))
    if found is None:
        raise click.BadParameter(f"no user has the email {email!r}", param_hint="--email")
    now = datetime.now(UTC)
    rows = [{**token_json(t, now), "email": t.email} for t in found]
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
        return
    click.echo("ID\tTOKEN\tSTATUS\tEMAIL\tNAME\tCREATED\tLAST USED\tEXPIRES")
    for row in rows:
        shown = f"{row['prefix']}…" if row["prefix"] else "-"
        cells = [row["id"], shown, row["status"], row["email"], row["name"], row["created_at"],
                 row["last_used_at"] or "-", row["expires_at"] or "never"]  # fmt: skip
        click.echo("\t".join(str(cell) for cell in cells))


@token_group.command(name="revoke")
@click.argument("token_id", metavar="ID", callback=_option_value(_token_id, "ID"))
@click.pass_obj
def token_revoke(obj: CommandContext, token_id: int) -> None:
    """Revoke token ID (see `token list`) and the tokens made with it; refused at once."""
    with _migrated(obj) as settings:
        revoked = asyncio.run(_with_store(settings, lambda s: s.revoke_token(token_id, None)))
    if revoked is None:
        raise click.BadParameter(f"there is no token {token_id}", param_hint="ID")
    if not revoked:
        click.echo(f"Token {token_id} was already revoked.")
        return
    also = [str(i) for i in revoked if i != token_id]
    made = f" and the tokens it made: {', '.join(also)}" if also else ""
    click.echo(f"Revoked token {token_id}{made}.")

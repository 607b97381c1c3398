"""`dispatch-engine sender …`: add, list and test senders from scripts; reseal passwords;
DKIM keys and the DNS checks of a sender's domain."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import click
import orjson

from ..bootstrap import command_pool, servers_for
from ..config import Settings, ensure_secret_key
from ..dkim import dns_check, keys
from ..errors import DomainError, ValidationError
from ..hooks import Hooks
from ..queue import RedisQueue
from ..redis_client import connect_redis
from ..secretbox import secret_box
from ..senders import SenderService
from ..store import Store
from ..transport import TransportRegistry
from ..web.presenters import sender_json
from .context import CommandContext

T = TypeVar("T")


def _run(obj: CommandContext, work: Callable[[SenderService, Store], Awaitable[T]]) -> T:
    """Connect (to the configured servers or a running `up`), run `work`, disconnect."""

    async def main(settings: Settings) -> T:
        async with command_pool(settings) as pool:
            redis = connect_redis(settings)
            try:
                store = Store(pool)
                specs = await Hooks(obj.plugins, settings).transports()
                service = SenderService(
                    store,
                    RedisQueue(redis.data),
                    secret_box(settings),
                    specs,
                    allow_private_targets=settings.private_targets_allowed,
                )
                return await work(service, store)
            finally:
                await redis.aclose()

    with servers_for(obj.settings) as settings:
        try:
            return asyncio.run(main(ensure_secret_key(settings)))
        except DomainError as exc:
            raise click.ClickException(exc.message) from None


@click.group(name="sender")
def sender_group() -> None:
    """Manage sending identities (from address, account, limits)."""


@sender_group.command(name="list")
@click.option("--email", required=True, help="The owner of the senders.")
@click.pass_obj
def list_senders(obj: CommandContext, email: str) -> None:
    """Print the senders of EMAIL as JSON lines (passwords are never shown)."""

    async def work(service: SenderService, store: Store) -> list[dict[str, Any]]:
        user = await store.ensure_user(email)
        return [sender_json(s) for s in await store.senders_of(user.id)]

    for item in _run(obj, work):
        click.echo(orjson.dumps(item))


@sender_group.command(name="add")
@click.option("--email", required=True, help="The owner (created if new).")
@click.option("--from", "from_address", required=True, help="The from address.")
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--transport", default="smtp", show_default=True)
@click.option("--host", help="SMTP host (e.g. smtp.ethereal.email).")
@click.option("--port", type=int, default=587, show_default=True)
@click.option("--username", help="SMTP user name.")
@click.option("--password-stdin", is_flag=True, help="Read the SMTP password from stdin.")
@click.option(
    "--tls", type=click.Choice(["none", "starttls", "tls"]), default="starttls", show_default=True
)
@click.option("--hourly-limit", type=int, help="Emails per window (default MAX_EMAILS_PER_HOUR).")
@click.option("--min-gap-ms", type=int, default=0, show_default=True)
@click.option("--daily-limit", type=int, help="Emails per day (default none).")
@click.option("--delay-jitter-ms", type=int, default=0, show_default=True)
@click.option("--default", "is_default", is_flag=True, help="Make it the default sender.")
@click.option(
    "--transactional", is_flag=True, help="Its emails may go without the unsubscribe footer."
)
@click.pass_obj
def add_sender(
    obj: CommandContext,
    email: str,
    from_address: str,
    display_name: str,
    transport: str,
    host: str | None,
    port: int,
    username: str | None,
    password_stdin: bool,
    tls: str,
    hourly_limit: int | None,
    min_gap_ms: int,
    daily_limit: int | None,
    delay_jitter_ms: int,
    is_default: bool,
    transactional: bool,
) -> None:
    """Add a sender for EMAIL and print it as JSON."""
    data: dict[str, Any] = {
        "from_address": from_address,
        "display_name": display_name,
        "transport": transport,
        "min_gap_ms": min_gap_ms,
        "delay_jitter_ms": delay_jitter_ms,
        "daily_limit": daily_limit,
        "is_default": is_default,
        "transactional": transactional,
    }
    if hourly_limit is not None:
        data["hourly_limit"] = hourly_limit
    if transport == "smtp":
        data["settings"] = {"host": host, "port": port, "username": username, "tls": tls}
        if password_stdin:
            data["settings"]["password"] = sys.stdin.readline().rstrip("\n")

    async def work(service: SenderService, store: Store) -> dict[str, Any]:
        user = await store.ensure_user(email)
        return sender_json(await service.create(user, data, obj.settings.max_emails_per_hour))

    click.echo(orjson.dumps(_run(obj, work)))


@sender_group.command(name="test")
@click.option("--email", required=True, help="The owner of the sender.")
@click.option("--send", is_flag=True, help="Also send a test message to the owner.")
@click.argument("sender_id", type=int)
@click.pass_obj
def test_sender(obj: CommandContext, email: str, send: bool, sender_id: int) -> None:
    """Connect, negotiate TLS and log in with a sender's account; exit 1 if it fails."""

    async def work(service: SenderService, store: Store) -> dict[str, Any]:
        user = await store.ensure_user(email)
        settings = ensure_secret_key(obj.settings)
        registry = TransportRegistry(
            list(service.transports.values()), settings, store.pool, secret_box(settings)
        )
        return await service.check(registry, user, sender_id, email if send else None)

    result = _run(obj, work)
    click.echo(result["message"] if result["ok"] else f"{result['error']}: {result['message']}")
    if not result["ok"]:
        sys.exit(1)


@sender_group.command(name="resume")
@click.option("--email", required=True, help="The owner of the sender.")
@click.argument("sender_id", type=int)
@click.pass_obj
def resume_sender(obj: CommandContext, email: str, sender_id: int) -> None:
    """Unpark a sender whose account the server kept refusing; print it as JSON."""

    async def work(service: SenderService, store: Store) -> dict[str, Any]:
        user = await store.ensure_user(email)
        return sender_json(await service.resume(user, sender_id))

    click.echo(orjson.dumps(_run(obj, work)))


@sender_group.command(name="reseal")
@click.pass_obj
def reseal(obj: CommandContext) -> None:
    """Re-encrypt stored passwords and DKIM keys with DISPATCH_SECRET_KEY (after a rotation)."""

    async def work(service: SenderService, store: Store) -> tuple[int, int]:
        rows = await store.sealed_transport_settings()
        for row in rows:
            settings = dict(row["transport_settings"])
            settings["password"] = service.box.reseal(settings["password"])
            await store.set_transport_settings(row["id"], settings)
        return len(rows), await keys.reseal_keys(store.pool, service.box)

    passwords, dkim_keys = _run(obj, work)
    click.echo(f"Resealed {passwords} password(s) with the current key.")
    click.echo(f"Resealed {dkim_keys} DKIM key(s) with the current key.")


def _run_db(obj: CommandContext, work: Callable[[asyncpg.Pool, Settings], Awaitable[T]]) -> T:
    """Like `_run`, with the database only (operator commands on any owner's sender)."""

    async def main(settings: Settings) -> T:
        async with command_pool(settings) as pool:
            return await work(pool, settings)

    with servers_for(obj.settings) as settings:
        try:
            return asyncio.run(main(ensure_secret_key(settings)))
        except DomainError as exc:
            raise click.ClickException(exc.message) from None


@sender_group.command(name="dkim-keygen")
@click.option(
    "--selector",
    default="dispatch",
    show_default=True,
    help="The DKIM selector (a new one per rotation lets both keys be published).",
)
@click.option("--domain", help="The d= domain (default: the sender's From domain).")
@click.option("--bits", type=click.Choice([str(b) for b in keys.KEY_BITS]), default="2048",
              show_default=True, help="RSA key size.")  # fmt: skip
@click.option(
    "--replace",
    is_flag=True,
    help="Replace the key of the same selector (mail in flight then fails DKIM).",
)
@click.argument("sender_id", type=int)
@click.pass_obj
def dkim_keygen(
    obj: CommandContext,
    selector: str,
    domain: str | None,
    bits: str,
    replace: bool,
    sender_id: int,
) -> None:
    """Make a DKIM key for SENDER_ID, store it sealed, print the DNS TXT record to publish.

    The sender signs every email with it from the worker's next batch on; publish the
    record first (`sender check-dns` tells when it is visible)."""

    async def work(pool: asyncpg.Pool, settings: Settings) -> str:
        sender = await keys.sender_by_id(pool, sender_id)
        if sender.dkim_selector == keys.check_selector(selector) and not replace:
            raise ValidationError(
                "selector",
                f"sender {sender.id} already signs with selector {selector!r}: give a new "
                "--selector (publish it beside the old record), or pass --replace",
            )
        pair = keys.generate_key(
            selector, domain or sender.from_address.rpartition("@")[2], int(bits)
        )
        await keys.store_key(pool, secret_box(settings), sender.id, pair)
        return keys.dns_record(pair.selector, pair.domain, pair.public_b64)

    record = _run_db(obj, work)
    click.echo(f"Publish this TXT record, then run `dispatch-engine sender check-dns {sender_id}`:")
    click.echo(record)


@sender_group.command(name="check-dns")
@click.option(
    "--nameserver",
    envvar="DISPATCH_DNS_SERVER",
    help="Ask this nameserver (an IP) instead of the system's resolver.",
)
@click.option(
    "--dns-port",
    type=click.IntRange(1, 65535),
    default=53,
    show_default=True,
    envvar="DISPATCH_DNS_PORT",
    help="The nameserver's port.",
)
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=5.0, show_default=True,
              help="Seconds per lookup.")  # fmt: skip
@click.argument("sender_id", type=int)
@click.pass_obj
def check_dns(
    obj: CommandContext, nameserver: str | None, dns_port: int, timeout: float, sender_id: int
) -> None:
    """Report SPF, DKIM and DMARC for SENDER_ID's domain; exit 1 if any is missing or wrong."""

    try:  # a bad --nameserver is said before anything connects
        lookup = dns_check.Lookup(nameserver, dns_port, timeout)
    except DomainError as exc:
        raise click.BadParameter(exc.message, param_hint="--nameserver") from None

    async def work(pool: asyncpg.Pool, settings: Settings) -> list[dns_check.Check]:
        sender = await keys.sender_by_id(pool, sender_id)
        return await dns_check.check_sender(lookup, sender)

    checks = _run_db(obj, work)
    for check in checks:
        click.echo(check.line())
    if not all(check.ok for check in checks):
        sys.exit(1)

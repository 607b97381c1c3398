"""Every hook is documented and tested; the registration and lifecycle hooks, for real.

Each `test_hook_<name>` loads a plugin from a plugins folder into the real app (real
PostgreSQL and Redis) and checks what the hook received and what it changed.
"""

from __future__ import annotations

import ast
import asyncio
import re
from dataclasses import replace
from pathlib import Path

import aiohttp_jinja2

from dispatch_engine import hookspecs
from dispatch_engine.config import Settings
from dispatch_engine.store import Store
from dispatch_engine.web.app_keys import AUTH_PROVIDERS

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir
from .support.processes import run_cli

ROOT = Path(__file__).resolve().parent.parent
ISSUE_HOOKS = {
    "register_transports",
    "register_pacing_policies",
    "register_auth_providers",
    "register_routes",
    "register_commands",
    "prepare_jinja2_environment",
    "startup",
    "shutdown",
    "dispatch_sent",
    "dispatch_failed",
    "sender_limited",
    "campaign_completed",
}


def hook_names() -> list[str]:
    """The functions marked `@hookspec` in dispatch_engine/hookspecs.py."""
    tree = ast.parse(Path(hookspecs.__file__).read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list)
    ]


def defined_function_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


def test_every_hook_has_a_docs_entry_and_a_test() -> None:
    names = hook_names()
    assert set(names) >= ISSUE_HOOKS, ISSUE_HOOKS - set(names)
    docs = (ROOT / "docs" / "plugins.md").read_text()
    undocumented = [n for n in names if not re.search(rf"^###\s+`{n}\(", docs, re.MULTILINE)]
    assert not undocumented, (
        f"hooks without a '### `name(…)`' entry in docs/plugins.md: {undocumented}"
    )
    tests = defined_function_names()
    untested = [n for n in names if f"test_hook_{n}" not in tests]
    assert not untested, f"hooks without a test_hook_<name> test under tests/: {untested}"
    for name in names:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert re.search(r"\bCalled\b", doc), f"{name}: the docstring must say when it is called"
        assert re.search(r"\bReturns?\b|\breturns\b", doc), f"{name}: say what it returns"
        assert re.search(r"\b(api|worker|cli|every)\s+process", doc, re.IGNORECASE), (
            f"{name}: say in which process it is called"
        )


MEMO = """
from dispatch_engine.transport import SendResult, TransportSpec

class Memo:
    def __init__(self, context):
        self.folder = Path(context.sender_settings["folder"])

    async def send(self, message):
        (self.folder / f"{message.dispatch_id}.eml").write_bytes(message.raw)
        return SendResult("250 kept as a memo")

    async def close(self):
        pass

@hookimpl
async def register_transports(settings):
    record("register_transports", transport=settings.transport)
    return [TransportSpec("memo", Memo, "writes each email to a folder")]
"""


async def test_hook_register_transports(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, memo=MEMO)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    client = await make_client(replace(settings, plugins_dir=folder))
    headers = auth(await new_token(store))
    made = await client.post(
        "/api/senders",
        headers=headers,
        json={
            "from_address": "memo@example.com",
            "transport": "memo",
            "settings": {"folder": str(outbox)},
        },
    )
    assert made.status == 201, await made.text()
    payload = {
        "subject": "Memo",
        "body": "Hi {{ email }}",
        "sender": (await made.json())["id"],
        "recipients": ["r0@example.com", "r1@example.com"],
    }
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()

    async def both_sent() -> bool:
        recorded = await store.pool.fetchval(
            "SELECT count(*) FROM dispatches WHERE status = 'sent'"
        )
        return recorded == 2 and len(list(outbox.glob("*.eml"))) == 2

    await wait_for(both_sent)
    rows = await store.pool.fetch(
        "SELECT d.id, d.recipient, d.message_id, l.response, l.transport FROM dispatches d"
        " JOIN ledger l ON l.dispatch_id = d.id"
    )
    for row in rows:
        raw = (outbox / f"{row['id']}.eml").read_text()
        assert f"To: {row['recipient']}" in raw and f"Message-ID: {row['message_id']}" in raw
        assert (row["transport"], row["response"]) == ("memo", "250 kept as a memo")
    assert events(folder, "register_transports")[0]["transport"] == "capture"


TALLY = """
from dispatch_engine.pacing import PacingDecision, PacingPolicySpec

class Tally:
    def __init__(self, redis, settings):
        self.window = settings.rate_window_seconds

    async def acquire(self, request):
        record("acquire", sender_id=request.sender_id, count=request.count,
               limit=request.hourly_limit, window=self.window)
        return PacingDecision(request.count)

@hookimpl
def register_pacing_policies(settings):
    return [PacingPolicySpec("tally", Tally, "counts what it is asked")]
"""


async def test_hook_register_pacing_policies(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, tally=TALLY)
    paced = replace(settings, plugins_dir=folder, pacing=("tally", "fixed_window", "min_gap"))
    client = await make_client(paced)
    headers = auth(await new_token(store))
    payload = {
        "subject": "s",
        "body": "b",
        "hourly_limit": 500,
        "recipients": [f"t{i}@example.com" for i in range(5)],
    }
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201

    async def all_sent() -> bool:
        sql = "SELECT count(*) FROM dispatches WHERE status = 'sent'"
        return int(await store.pool.fetchval(sql)) == 5

    await wait_for(all_sent)
    sender_id = await store.pool.fetchval("SELECT sender_id FROM campaigns")
    asked = events(folder, "acquire")
    assert sum(e["count"] for e in asked) == 5
    assert {(e["sender_id"], e["limit"], e["window"]) for e in asked} == {(sender_id, 500, 3600)}


MAGIC = """
from dispatch_engine.auth import AuthProviderSpec, LoginIdentity

async def start(request, context):
    record("start", callback_url=context.callback_url)
    return LoginIdentity("magic", "m-1", "magic@example.com", email_verified=True, name="Mage")

@hookimpl
async def register_auth_providers(settings):
    return [AuthProviderSpec("magic", "Sign in by magic", start)]
"""


async def test_hook_register_auth_providers(
    make_client: Start, settings: Settings, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, magic=MAGIC)
    client = await make_client(replace(settings, plugins_dir=folder))
    assert "magic" in client.app[AUTH_PROVIDERS]
    login = await client.get("/login")
    page = await login.text()
    assert "Sign in by magic" in page
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert csrf
    signed_in = await client.post(
        "/auth/magic/start", data={"csrf_token": csrf.group(1), "next": "/"}
    )
    assert signed_in.status == 200, await signed_in.text()
    me = await client.get("/api/me")
    assert (await me.json())["email"] == "magic@example.com"
    assert events(folder, "start")[0]["callback_url"].endswith("/auth/magic/callback")


ROUTES = """
from aiohttp import web
from dispatch_engine.web.middleware import current_user

routes = web.RouteTableDef()

@routes.get("/api/hello/{name}")
async def hello(request):
    user = current_user(request)
    return web.json_response({"hello": request.match_info["name"], "user": user.email})

@hookimpl
async def register_routes(settings):
    return routes
"""


async def test_hook_register_routes(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, hello=ROUTES)
    client = await make_client(replace(settings, plugins_dir=folder))
    anonymous = await client.get("/api/hello/ada")
    assert anonymous.status == 401  # the API's bearer token guards plugin routes too
    answer = await client.get("/api/hello/ada", headers=auth(await new_token(store)))
    assert answer.status == 200
    assert await answer.json() == {"hello": "ada", "user": "ada@example.com"}
    worker_only = await make_client(replace(settings, plugins_dir=folder), roles={"worker"})
    assert (await worker_only.get("/api/hello/ada")).status == 404  # api role only


JINJA = """
@hookimpl
async def prepare_jinja2_environment(env, settings):
    env.filters["shout"] = lambda value: str(value).upper() + "!"
    env.globals["deployment"] = settings.public_url
"""


async def test_hook_prepare_jinja2_environment(
    make_client: Start, settings: Settings, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, shout=JINJA)
    client = await make_client(replace(settings, plugins_dir=folder))
    env = aiohttp_jinja2.get_env(client.app)
    assert env.from_string("{{ 'hello' | shout }} {{ deployment }}").render() == (
        f"HELLO! {settings.public_url}"
    )
    assert "when" in env.filters  # the dashboard's own filters are still there


COMMANDS = """
import click

@click.command()
@click.option("--name", default="world")
def hello(name):
    click.echo(f"hello {name}")

@hookimpl
async def register_commands(cli):
    cli.add_command(hello)
"""


async def test_hook_register_commands(env: dict[str, str], tmp_path: Path) -> None:
    folder = plugin_dir(tmp_path, greet=COMMANDS)
    ran = await asyncio.to_thread(
        run_cli, ["--plugins-dir", str(folder), "hello", "--name", "Ada"], env
    )
    assert (ran.returncode, ran.stdout) == (0, "hello Ada\n"), ran.stderr
    listed = await asyncio.to_thread(
        run_cli, ["--help"], env | {"DISPATCH_PLUGINS_DIR": str(folder)}
    )
    assert re.search(r"^\s+hello\b", listed.stdout, re.MULTILINE), listed.stdout


LIFECYCLE = """
from dispatch_engine.web.app_keys import ROLES, STORE, WORKERS

@hookimpl
async def startup(settings, app):
    users = await app[STORE].pool.fetchval("SELECT count(*) FROM users")
    record("startup", roles=sorted(app[ROLES]), users=users, port=settings.port)

@hookimpl
async def shutdown(settings, app):
    workers = app.get(WORKERS)
    record("shutdown", roles=sorted(app[ROLES]), db=await app[STORE].pool.fetchval("SELECT 1"),
           workers_stopped=workers is None or workers.stopping)
"""


async def test_hook_startup(make_client: Start, settings: Settings, tmp_path: Path) -> None:
    folder = plugin_dir(tmp_path, lifecycle=LIFECYCLE)
    await make_client(replace(settings, plugins_dir=folder), roles={"api", "worker"})
    await make_client(replace(settings, plugins_dir=folder), roles={"sweeper"})
    started = events(folder, "startup")
    assert [e["roles"] for e in started] == [["api", "worker"], ["sweeper"]]
    assert all(e["users"] == 0 and e["port"] == 0 for e in started)  # connected, not serving


async def test_hook_shutdown(make_client: Start, settings: Settings, tmp_path: Path) -> None:
    folder = plugin_dir(tmp_path, lifecycle=LIFECYCLE)
    client = await make_client(replace(settings, plugins_dir=folder))
    assert events(folder, "shutdown") == []
    await client.close()
    stopped = events(folder, "shutdown")
    assert stopped == [
        {
            "hook": "shutdown",
            "roles": ["api", "sweeper", "worker"],
            "db": 1,
            "workers_stopped": True,
        }
    ]

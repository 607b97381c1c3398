"""Loading plugins: folders, the allow/deny list, overrides, misspelled hooks, broken startups."""

from __future__ import annotations

import ast
import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch_engine.config import PluginFilter, Settings, SettingsError, load_settings
from dispatch_engine.plugins import DEFAULT_PLUGINS, PluginError, get_plugin_manager
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.plugin_dirs import events, plugin_dir
from .support.processes import Proc, run_cli

TYPO = """
@hookimpl
def dispatch_snet(dispatch_id):
    pass
"""

WRONG_ARGUMENT = """
@hookimpl
def dispatch_sent(dispatch_id, colour):
    pass
"""


def test_a_misspelled_hook_fails_at_start_naming_it(tmp_path: Path) -> None:
    folder = plugin_dir(tmp_path, typo=TYPO)
    with pytest.raises(PluginError) as raised:
        get_plugin_manager(Settings(plugins_dir=folder))
    assert "'typo'" in str(raised.value) and "dispatch_snet" in str(raised.value)


def test_a_hook_argument_the_spec_lacks_fails_at_start(tmp_path: Path) -> None:
    folder = plugin_dir(tmp_path, colours=WRONG_ARGUMENT)
    with pytest.raises(PluginError) as raised:
        get_plugin_manager(Settings(plugins_dir=folder))
    assert "'colours'" in str(raised.value) and "colour" in str(raised.value)


async def test_the_cli_says_which_hook_is_wrong_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    for name, source, says in (
        ("typo", TYPO, "unknown hook 'dispatch_snet'"),
        ("colours", WRONG_ARGUMENT, "Argument(s) {'colour'} are declared in the hookimpl"),
    ):
        folder = plugin_dir(tmp_path / name, **{name: source})
        ran = await asyncio.to_thread(run_cli, ["--plugins-dir", str(folder), "plugins"], env)
        assert ran.returncode == 2
        assert ran.stderr.count("\n") == 1 and "Traceback" not in ran.stderr, ran.stderr
        assert f"plugin '{name}'" in ran.stderr and says in ran.stderr, ran.stderr


ANGRY = """
@hookimpl
async def startup(settings, app):
    raise RuntimeError("no licence key configured")
"""


async def test_a_plugin_raising_in_startup_stops_the_process_naming_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, angry=ANGRY)
    proc = Proc(["run"], env | {"DISPATCH_PLUGINS_DIR": str(folder)}, tmp_path / "run.log")
    code = await asyncio.to_thread(proc.proc.wait, 60)
    proc.stop()
    output = proc.output()
    assert code == 2, output
    assert "Traceback" not in output, output
    expected = (
        "dispatch-engine: plugin 'angry' failed in startup: RuntimeError: no licence key configured"
    )
    assert output.strip().splitlines()[-1] == expected, output
    assert output.count("no licence key") == 1, output


def test_dispatch_plugins_syntax_is_checked() -> None:
    assert load_settings({"DISPATCH_PLUGINS": "-notify, -webhook"}).plugins_deny == (
        "notify",
        "webhook",
    )
    assert load_settings({"DISPATCH_PLUGINS": "smtp,capture"}).plugins_allow == ("smtp", "capture")
    assert load_settings({"DISPATCH_PLUGINS": ""}).plugins_allow is None
    for bad, says in (
        ("smtp,-notify", "not both"),
        ("no/slash", "'no/slash' is not a plugin name"),
        ("-", "'-' is not a plugin name"),
    ):
        with pytest.raises(SettingsError, match="DISPATCH_PLUGINS") as raised:
            load_settings({"DISPATCH_PLUGINS": bad})
        assert says in str(raised.value)


BROKEN_IMPORT = """
raise ImportError("this plugin must never be imported")
"""


async def _plugins_json(env: dict[str, str], *args: str) -> dict[str, dict[str, Any]]:
    ran = await asyncio.to_thread(run_cli, [*args, "plugins", "--json"], env)
    assert ran.returncode == 0, ran.stderr
    return {p["name"]: p for p in json.loads(ran.stdout)}


async def test_dispatch_plugins_denies_or_allows_by_name(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, broken=BROKEN_IMPORT, memo="")
    denied = await _plugins_json(
        env | {"DISPATCH_PLUGINS": "-notify,-broken"}, "--plugins-dir", str(folder)
    )
    assert "notify" not in denied and "broken" not in denied  # never imported
    assert {"memo", "capture", "smtp", "webhook", "business_hours"} <= set(denied)
    text = await asyncio.to_thread(
        run_cli,
        ["--plugins-dir", str(folder), "plugins"],
        env | {"DISPATCH_PLUGINS": "-notify,-broken"},
    )
    assert "Left out by DISPATCH_PLUGINS: broken, notify" in text.stdout
    allowed = await _plugins_json(
        env | {"DISPATCH_PLUGINS": "capture,pacing,memo"}, "--plugins-dir", str(folder)
    )
    assert set(allowed) == {"capture", "pacing", "memo"}
    assert allowed["memo"]["source"] == "plugins dir"
    unknown = await asyncio.to_thread(run_cli, ["plugins"], env | {"DISPATCH_PLUGINS": "-notfy"})
    assert unknown.returncode == 2
    assert "DISPATCH_PLUGINS names notfy, but no plugin has that name" in unknown.stderr


async def test_a_denied_builtin_is_not_offered(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client(replace(settings, plugins=PluginFilter(deny=("webhook",))))
    made = await client.post(
        "/api/senders",
        headers=auth(await new_token(store)),
        json={"from_address": "hook@example.com", "transport": "webhook"},
    )
    assert made.status == 422
    assert (await made.json())["error"]["field"] == "transport"


LISTED = """
from dispatch_engine.pacing import PacingDecision, PacingPolicySpec
from dispatch_engine.transport import SendResult, TransportSpec

class Nothing:
    def __init__(self, context):
        pass
    async def send(self, message):
        return SendResult("250")
    async def close(self):
        pass

@hookimpl
async def register_transports(settings):
    return [TransportSpec("nothing", Nothing)]

@hookimpl
def register_pacing_policies(settings):
    return [PacingPolicySpec("free", lambda redis, settings: None)]

@hookimpl
def dispatch_sent(dispatch_id):
    pass
"""


async def test_the_plugins_command_shows_source_hooks_and_registrations(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, listed=LISTED)
    found = await _plugins_json(env, "--plugins-dir", str(folder))
    assert found["listed"] == {
        "name": "listed",
        "source": "plugins dir",
        "location": str((folder / "listed.py").resolve()),
        "hooks": ["dispatch_sent", "register_pacing_policies", "register_transports"],
        "registers": {"transports": ["nothing"], "pacing_policies": ["free"]},
    }
    assert found["webhook"]["registers"] == {"transports": ["webhook"]}
    assert found["dev_login"]["registers"] == {"auth_providers": ["dev"]}
    assert found["pacing"]["registers"]["pacing_policies"] == [
        "fixed_window",
        "sliding_window",
        "min_gap",
    ]
    text = await asyncio.to_thread(
        run_cli, ["plugins"], env | {"DISPATCH_PLUGINS_DIR": str(folder)}
    )
    lines = text.stdout.split("listed  (plugins dir)")[1].splitlines()[1:]
    block = "\n".join(line for line in lines[:4] if line.startswith("    "))
    assert "hooks: dispatch_sent, register_pacing_policies, register_transports" in block
    assert "transports: nothing" in block and "pacing policies: free" in block


# Registers a transport under the built-in name "capture": it replaces the built-in one.
OVERRIDE = """
from dispatch_engine.transport import SendResult, TransportSpec

class Kept:
    def __init__(self, context):
        pass
    async def send(self, message):
        record("send", to=list(message.recipients))
        return SendResult("250 kept by the override")
    async def close(self):
        pass

@hookimpl
def register_transports(settings):
    return [TransportSpec("capture", Kept, "replaces the built-in capture inbox")]
"""


async def test_a_plugin_overrides_a_builtin_transport_of_the_same_name(
    make_client: Start, settings: Settings, store: Store, tmp_path: Path
) -> None:
    folder = plugin_dir(tmp_path, mine=OVERRIDE)
    client = await make_client(replace(settings, plugins_dir=folder))
    payload = {"subject": "s", "body": "b", "recipients": ["o@example.com"]}
    response = await client.post(
        "/api/emails/schedule", json=payload, headers=auth(await new_token(store))
    )
    assert response.status == 201

    async def sent() -> bool:
        return await store.pool.fetchval("SELECT status FROM dispatches") == "sent"

    await wait_for(sent)
    assert events(folder, "send") == [{"hook": "send", "to": ["o@example.com"]}]
    assert await store.pool.fetchval("SELECT count(*) FROM captured_messages") == 0
    assert await store.pool.fetchval("SELECT response FROM ledger") == "250 kept by the override"


def test_built_in_plugins_import_only_the_public_plugin_surface() -> None:
    """The built-ins are written like anyone's plugin: `dispatch_engine.plugin`, or their own
    package's modules, and nothing else of the core."""
    builtins = Path(__file__).resolve().parents[1] / "dispatch_engine" / "builtins"
    for path in sorted(builtins.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                module = node.module or ""
                assert not module.startswith("dispatch_engine") or module == (
                    "dispatch_engine.plugin"
                ), (path, module)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("dispatch_engine") for a in node.names), path
    assert {m.rpartition(".")[2] for m in DEFAULT_PLUGINS} == {
        p.stem for p in builtins.iterdir() if p.stem != "__init__" and p.name != "__pycache__"
    }

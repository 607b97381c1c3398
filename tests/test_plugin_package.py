"""The tutorial in docs/plugins.md, for real: its files are built into a package, pip-installed
into this venv, found through the entry point, and send real emails from a running app."""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.util
import json
import re
import subprocess
import sys
from email import message_from_bytes
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .support.helpers import auth, wait_for
from .support.processes import Proc, run_cli

pytestmark = pytest.mark.timeout(600)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
FILE_BLOCK = re.compile(r"```(?:python|toml)\n# file: (\S+)\n(.*?)```", re.DOTALL)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
PACKAGE = "dispatch-file-drop"


def tutorial_files() -> dict[str, str]:
    """The tutorial's files: code blocks whose first line is `# file: <path>`."""
    return {match[1]: match[2] for match in FILE_BLOCK.finditer(DOCS.read_text())}


def dispatch_engine_imports(source: str) -> set[str]:
    """The dispatch_engine modules a file imports from."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dispatch_engine"):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dispatch_engine")}
    return found


def test_the_tutorial_plugin_imports_only_the_public_plugin_surface() -> None:
    source = tutorial_files()["dispatch_file_drop/__init__.py"]
    assert dispatch_engine_imports(source) == {"dispatch_engine.plugin"}


def docs_testing_example() -> str:
    """The docs' example of a plugin test with dispatch_engine.testing."""
    (example,) = [b for b in PYTHON_BLOCK.findall(DOCS.read_text()) if "appliance(" in b]
    return str(example)


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _install(project: Path) -> None:
    # Without the build backend in this venv, pip fetches it into an isolated build env.
    offline = importlib.util.find_spec("hatchling") is not None
    isolation = ["--no-build-isolation"] if offline else []
    installed = _pip("install", "--no-deps", *isolation, str(project))
    assert installed.returncode == 0, installed.stdout + installed.stderr


async def _json(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, **kw) as response:
        assert response.status < 300, await response.text()
        return await response.json()


async def test_a_pip_installed_plugin_is_found_by_its_entry_point_and_sends(
    env: dict[str, str], tmp_path: Path
) -> None:
    files = tutorial_files()
    assert set(files) == {"pyproject.toml", "dispatch_file_drop/__init__.py"}
    project = tmp_path / PACKAGE
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    await asyncio.to_thread(_install, project)
    try:
        listed = await asyncio.to_thread(run_cli, ["plugins", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        plugins = {p["name"]: p for p in json.loads(listed.stdout)}
        assert plugins["file_drop"]["source"] == f"entry point ({PACKAGE})"
        assert plugins["file_drop"]["registers"]["transports"] == ["file_drop"]
        assert "site-packages" in plugins["file_drop"]["location"]
        # The plugin's own setting is checked at start, like the core's.
        bad = await asyncio.to_thread(
            run_cli, ["plugins"], env | {"FILE_DROP_FOLDER": str(tmp_path / "nope")}
        )
        assert bad.returncode == 2 and "FILE_DROP_FOLDER must be a folder" in bad.stderr
        await _send_through_a_running_app(env, tmp_path)
        (tmp_path / "docs-example").mkdir()
        await _run_the_docs_testing_example(tmp_path / "docs-example")
    finally:
        sys.modules.pop("dispatch_file_drop", None)
        removed = await asyncio.to_thread(_pip, "uninstall", "-y", PACKAGE)
        assert removed.returncode == 0, removed.stderr
    after = await asyncio.to_thread(run_cli, ["plugins", "--json"], env)
    assert '"file_drop"' not in after.stdout


async def _send_through_a_running_app(env: dict[str, str], tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    proc = Proc(["run"], env, tmp_path / "run.log")
    try:
        port = proc.wait_for_output(r"Running .* on http://127\.0\.0\.1:(\d+)").group(1)
        base = f"http://127.0.0.1:{port}"
        made = await asyncio.to_thread(
            run_cli, ["token", "create", "--email", "p@example.com"], env
        )
        headers = auth(made.stdout.strip())
        async with aiohttp.ClientSession(headers=headers) as session:
            sender = await _json(
                session,
                "POST",
                f"{base}/api/senders",
                json={
                    "from_address": "drop@example.com",
                    "transport": "file_drop",
                    "settings": {"folder": str(outbox)},
                },
            )
            recipients = ["ada@example.com", "alan@example.com"]
            answer = await _json(
                session,
                "POST",
                f"{base}/api/emails/schedule",
                json={
                    "subject": "Dropped",
                    "body": "Hi {{ email }}",
                    "sender": "drop@example.com",
                    "recipients": recipients,
                },
            )
            campaign = answer["campaign"]["id"]

            async def check() -> bool:
                detail = await _json(session, "GET", f"{base}/api/campaigns/{campaign}")
                return bool(detail["status"] == "completed")

            await wait_for(check)
            sent = await _json(session, "GET", f"{base}/api/emails/sent")
        assert sender["transport"] == "file_drop"
        dropped = {message_from_bytes(p.read_bytes())["To"] for p in outbox.glob("*.eml")}
        assert dropped == set(recipients)
        assert all(item["status"] == "sent" for item in sent["items"])
    finally:
        proc.stop()


async def _run_the_docs_testing_example(folder: Path) -> None:
    importlib.invalidate_caches()  # the package was installed after this process started
    namespace: dict[str, Any] = {}
    exec(compile(docs_testing_example(), str(DOCS), "exec"), namespace)
    await namespace["test_file_drop_sends"](folder)

"""Plugins written by tests into a plugins folder; they record what their hooks receive."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

# Every test plugin starts with this: `record(hook, **fields)` appends a JSON line beside it.
RECORDER = """
import json
from pathlib import Path

from dispatch_engine import hookimpl


def record(hook, **fields):
    with open(Path(__file__).with_name("events.jsonl"), "a") as out:
        out.write(json.dumps({"hook": hook, **fields}) + "\\n")
"""


def plugin_dir(root: Path, **modules: str) -> Path:
    """A plugins folder under `root` holding one module per keyword (name=source)."""
    folder = root / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(RECORDER + textwrap.dedent(source))
    return folder


def events(folder: Path, hook: str | None = None) -> list[dict[str, Any]]:
    """What the folder's plugins recorded, oldest first (only `hook`'s when given)."""
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [e for e in found if hook is None or e["hook"] == hook]

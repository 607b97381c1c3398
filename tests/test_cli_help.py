"""The command answers help, its version and shell completion whatever the environment holds;
a command that would run still refuses a malformed setting, naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_config import clean_env, run_cli

BAD_CORE = {"MAX_EMAILS_PER_HOUR": "lots"}
BAD_PLUGIN_LIST = {"DISPATCH_PLUGINS": "no_such_plugin"}
BAD_PLUGIN_SETTING = {"SMTP_PORT": "0"}


def test_version_is_the_installed_distributions(tmp_path: Path) -> None:
    """--version reads the package metadata (pyproject's version as installed), not a copy."""
    info = tmp_path / "site" / "dispatch_engine-9.8.7.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dispatch-engine\nVersion: 9.8.7\n")
    env = clean_env(PYTHONPATH=str(tmp_path / "site"))
    result = subprocess.run(
        [sys.executable, "-m", "dispatch_engine", "--version"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "dispatch-engine, version 9.8.7"


@pytest.mark.parametrize("bad", [BAD_CORE, BAD_PLUGIN_LIST, BAD_PLUGIN_SETTING], ids=str)
@pytest.mark.parametrize(
    ("args", "usage"),
    [
        ([], "Usage: dispatch-engine [OPTIONS] COMMAND"),  # a group alone prints its help
        (["sender"], "Usage: dispatch-engine sender [OPTIONS] COMMAND"),
        (["--help"], "Usage: dispatch-engine [OPTIONS] COMMAND"),
        (["sender", "list", "--help"], "Usage: dispatch-engine sender list [OPTIONS]"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_help_answers_with_a_malformed_environment(
    tmp_path: Path, bad: dict[str, str], args: list[str], usage: str
) -> None:
    result = run_cli(args, clean_env(**bad, DISPATCH_DATA_DIR=str(tmp_path)), tmp_path)
    assert result.returncode in (0, 2) and usage in result.stdout + result.stderr, result.stderr
    assert "must be" not in result.stderr and "no plugin has that name" not in result.stderr


@pytest.mark.parametrize("bad", [BAD_CORE, BAD_PLUGIN_LIST, BAD_PLUGIN_SETTING], ids=str)
def test_a_command_under_a_group_still_refuses_naming_the_variable(
    tmp_path: Path, bad: dict[str, str]
) -> None:
    env = clean_env(**bad, DISPATCH_DATA_DIR=str(tmp_path))
    result = run_cli(["sender", "list", "--email", "a@example.com"], env, tmp_path)
    [name] = bad
    assert result.returncode == 2 and name in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_shell_completion_answers_with_a_malformed_environment(tmp_path: Path) -> None:
    """docs: `eval "$(_DISPATCH_ENGINE_COMPLETE=bash_source dispatch-engine)"`."""
    env = clean_env(**BAD_CORE, _DISPATCH_ENGINE_COMPLETE="bash_source")
    result = run_cli([], env, tmp_path)
    assert result.returncode == 0 and "_dispatch_engine_completion" in result.stdout, result.stderr

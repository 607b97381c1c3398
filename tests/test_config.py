"""Settings: bad values fail at start with a message naming the variable; defaults match the
design; `.env` is read; `.env.example` and the README document every declared variable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch_engine import __version__
from dispatch_engine.builtins.smtp.settings import SmtpSettings
from dispatch_engine.config import Settings, SettingsError, load_settings
from dispatch_engine.plugin import settings_of
from dispatch_engine.plugins import get_plugin_manager, shipped_settings
from dispatch_engine.setting import declared

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("dispatch-engine"))


def config_variables() -> set[str]:
    """Every declared variable: the core's settings and the built-in plugins' own."""
    names = {s.env for cls in shipped_settings() for _, s in declared(cls)}
    assert {"DATABASE_URL", "REDIS_URL", "MAX_EMAILS_PER_HOUR", "SMTP_HOST"} <= names, names
    return names


def start(environ: dict[str, str]) -> Settings:
    """What a process does at start: read the settings, then load the plugins (and theirs)."""
    settings = load_settings(environ)
    get_plugin_manager(settings, entry_points=False)
    return settings


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without anything the settings read, plus `extra`."""
    ours = config_variables()
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_EMAILS_PER_HOUR", "abc"),
        ("MAX_EMAILS_PER_HOUR", "0"),
        ("MAX_EMAILS_PER_HOUR", "-5"),
        ("DISPATCH_RATE_WINDOW_SECONDS", "1.5"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://localhost:6379"),
        ("SMTP_TLS", "maybe"),
        ("SMTP_PORT", "0"),
        ("DISPATCH_PORT", "70000"),
        ("DISPATCH_PORT", "eighty"),
        ("DISPATCH_SECRET_KEY", "short"),
        ("DISPATCH_PLUGINS_DIR", "/nonexistent"),
        ("DISPATCH_BASE_URL", "ftp://example.com"),
        ("DISPATCH_LOG_LEVEL", "loud"),
        ("SMTP_CA_FILE", "/nonexistent/ca.pem"),
        ("SMTP_CA_FILE", "/etc/hostname"),  # a file, but no certificate in it
        ("DISPATCH_MAX_UPLOAD_BYTES", "12"),
        ("DISPATCH_MAX_BODY_BYTES", "lots"),
        ("DISPATCH_MAX_RECIPIENTS", "0"),
        ("DISPATCH_MAX_UPLOAD_LINES", "-1"),
    ],
)
def test_bad_value_raises_settings_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        start({name: value})
    assert name in str(caught.value)


def test_secret_key_error_does_not_echo_the_secret() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"DISPATCH_SECRET_KEY": "hunter2secret"})
    assert "hunter2secret" not in str(caught.value)


def test_defaults_are_those_of_the_design() -> None:
    settings = load_settings({})
    assert settings.max_emails_per_hour == 50
    assert settings.rate_window_seconds == 3600
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.transport == "capture"
    assert settings.database_url is None
    assert settings.redis_url is None


def test_good_values_are_parsed() -> None:
    settings = start(
        {
            "DATABASE_URL": "postgresql://u:p@db.example:5432/dispatch",
            "REDIS_URL": "redis://cache.example:6379/0",
            "MAX_EMAILS_PER_HOUR": " 120 ",
            "DISPATCH_RATE_WINDOW_SECONDS": "5",
            "SMTP_TLS": "SSL",
            "DISPATCH_PORT": "9090",
            "DISPATCH_TRANSPORT": "smtp",
        }
    )
    assert settings.database_url == "postgresql://u:p@db.example:5432/dispatch"
    assert settings.redis_url == "redis://cache.example:6379/0"
    assert settings.max_emails_per_hour == 120
    assert settings.rate_window_seconds == 5
    assert settings_of(SmtpSettings, settings).tls == "tls"
    assert settings.port == 9090
    assert settings.transport == "smtp"


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in config_variables():
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("MAX_EMAILS_PER_HOUR=75\nDISPATCH_PORT=9000\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISPATCH_PORT", "9100")
    settings = load_settings()
    assert settings.max_emails_per_hour == 75
    assert settings.port == 9100


def test_cli_bad_value_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli(["run"], clean_env(MAX_EMAILS_PER_HOUR="abc"), tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "MAX_EMAILS_PER_HOUR" in lines[0]


def test_cli_reads_dotenv_in_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("# local settings\nDISPATCH_PORT=70000\n")
    result = run_cli(["run"], clean_env(), tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DISPATCH_PORT" in lines[0]


def test_cli_database_url_without_redis_url_names_redis_url(tmp_path: Path) -> None:
    # Nothing listens on port 1: the check must fail before any connection is tried.
    env = clean_env(DATABASE_URL="postgresql://127.0.0.1:1/x", DISPATCH_DATA_DIR=str(tmp_path))
    for command in (["run"], ["migrate"]):
        result = run_cli(command, env, tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "REDIS_URL" in lines[0]


def test_env_example_lists_every_variable_and_no_other() -> None:
    example = (ROOT / ".env.example").read_text()
    # `NAME=value` or a commented-out `# NAME=value` both document the variable.
    listed = set(re.findall(r"(?m)^\s*#?\s*([A-Z][A-Z0-9_]*)\s*=", example))
    missing = config_variables() - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
    unknown = listed - config_variables()
    assert not unknown, f".env.example lists {sorted(unknown)}, which no setting declares"


def test_env_example_values_are_the_declared_defaults() -> None:
    example = (ROOT / ".env.example").read_text()
    values = dict(re.findall(r"(?m)^([A-Z][A-Z0-9_]*)=(.*)$", example))
    for cls in shipped_settings():
        for _, declaration in declared(cls):
            raw = values.get(declaration.env, "")
            parsed = declaration.read({declaration.env: raw}) if raw else declaration.default
            assert parsed == declaration.default, (declaration.env, raw, declaration.default)


def test_readme_configuration_table_lists_every_variable_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"(?m)^\| ([^|]*) \|", section)
    listed = {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}
    missing = config_variables() - listed
    assert not missing, f"README's configuration table lacks {sorted(missing)}"
    unknown = listed - config_variables()
    assert not unknown, f"README's configuration table lists {sorted(unknown)}, not declared"


def test_every_declared_setting_has_a_one_line_doc() -> None:
    for cls in shipped_settings():
        for name, declaration in declared(cls):
            assert declaration.doc and "\n" not in declaration.doc, (cls, name)


def test_help_and_version_answer_even_with_a_malformed_setting(tmp_path: Path) -> None:
    """`--help` must help the user who set a variable wrong; a command still refuses."""
    env = clean_env(MAX_EMAILS_PER_HOUR="lots")
    helped = run_cli(["--help"], env, tmp_path)
    assert helped.returncode == 0 and "Usage: dispatch-engine" in helped.stdout, helped.stderr
    version = run_cli(["--version"], env, tmp_path)
    assert (
        version.returncode == 0
        and version.stdout.strip() == f"dispatch-engine, version {__version__}"
    )
    refused = run_cli(["plugins"], env, tmp_path)
    assert refused.returncode == 2 and "MAX_EMAILS_PER_HOUR" in refused.stderr


def test_a_malformed_plugin_setting_stops_a_command_but_not_help(tmp_path: Path) -> None:
    """SMTP_PORT is the smtp plugin's: checked when the plugins load, before any command."""
    env = clean_env(SMTP_PORT="0", DISPATCH_DATA_DIR=str(tmp_path))
    helped = run_cli(["--help"], env, tmp_path)
    assert helped.returncode == 0 and "Usage: dispatch-engine" in helped.stdout, helped.stderr
    refused = run_cli(["plugins"], env, tmp_path)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "SMTP_PORT must be between 1 and 65535, got 0" in lines[0]


def test_python_dash_m_runs_the_same_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispatch_engine", "--version"],
        env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and __version__ in result.stdout, result.stderr

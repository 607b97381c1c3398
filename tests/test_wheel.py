"""`pip install .` into a clean venv gives a working install: the wheel carries the
templates, migrations and built-in plugins (package data and modules of dispatch_engine),
and the installed code finds them."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Variables a subprocess must not inherit: it must find everything from the install alone.
_OWN_VARIABLES = ("DATABASE_URL", "REDIS_URL", "DISPATCH_", "MAX_EMAILS", "SMTP_", "WORKER_")


@dataclass(frozen=True)
class Install:
    python: Path
    cli: Path
    site_packages: Path


def _run(
    args: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_OWN_VARIABLES) and k not in {"PYTHONPATH", "PYTHONHOME"}
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    """Build the wheel from the checkout and install it alone into a fresh venv."""
    wheel_dir = tmp_path_factory.mktemp("wheel")
    build: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-w",
        wheel_dir,
        ROOT,
    ]
    if importlib.util.find_spec("hatchling") is not None:
        build.insert(4, "--no-build-isolation")
    _run(build, cwd=wheel_dir)
    (wheel,) = wheel_dir.glob("dispatch_engine-*.whl")

    # Same interpreter as the dev venv, so its compiled dependencies can be shared below.
    venv = tmp_path_factory.mktemp("venv") / "clean"
    _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], env=_clean_env())
    site_packages = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    # The dependencies without network: the dev venv's site-packages, searched *after* the
    # clean venv's own (a .pth line is appended to sys.path), so the wheel's files win.
    dev_site = [p for p in site.getsitepackages() if Path(p, "asyncpg").is_dir()]
    assert dev_site, "cannot find the dev venv's site-packages"
    (site_packages / "zz_dev_dependencies.pth").write_text("\n".join(dev_site) + "\n")
    return Install(python, venv / "bin" / "dispatch-engine", site_packages.resolve())


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder)


def test_package_is_imported_from_the_install(install: Install, tmp_path: Path) -> None:
    out = _run(
        [install.python, "-c", "import dispatch_engine; print(dispatch_engine.__file__)"],
        cwd=tmp_path,
        env=_clean_env(),
    ).stdout.strip()
    assert _inside(out, install.site_packages), out
    assert not _inside(out, ROOT), out


def test_package_data_is_inside_the_installed_package(install: Install, tmp_path: Path) -> None:
    code = (
        "import json; from dispatch_engine.migrate import MIGRATIONS; "
        "from dispatch_engine.web.templating import static_dir; "
        "print(json.dumps({'migrations': str(MIGRATIONS), 'templates': str(static_dir().parent)}))"
    )
    found = json.loads(_run([install.python, "-c", code], cwd=tmp_path, env=_clean_env()).stdout)
    installed = install.site_packages / "dispatch_engine"
    for name, path in found.items():
        assert Path(path).resolve() == installed / name, (name, path)
    source = ROOT / "dispatch_engine"
    assert sorted(p.name for p in (installed / "migrations").glob("*.sql")) == sorted(
        p.name for p in (source / "migrations").glob("*.sql")
    )
    assert sorted(p.name for p in (installed / "templates").rglob("*") if p.is_file()) == sorted(
        p.name for p in (source / "templates").rglob("*") if p.is_file()
    )


def test_plugins_command_lists_builtin_plugins_from_the_install(
    install: Install, tmp_path: Path
) -> None:
    result = _run(
        [install.cli, "plugins", "--json"],
        cwd=tmp_path,
        env=_clean_env(DISPATCH_DATA_DIR=str(tmp_path)),
    )
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    for name in ("smtp", "capture", "pacing"):
        assert name in plugins, sorted(plugins)
        assert plugins[name]["source"] == "built-in"
        assert _inside(plugins[name]["location"], install.site_packages), plugins[name]
        assert plugins[name]["hooks"], plugins[name]


async def test_migrate_from_the_install_creates_the_schema(
    install: Install, empty_database: str, servers: tuple[str, str], tmp_path: Path
) -> None:
    env = _clean_env(
        DATABASE_URL=empty_database, REDIS_URL=servers[1], DISPATCH_DATA_DIR=str(tmp_path)
    )
    proc = await asyncio.create_subprocess_exec(
        str(install.cli),
        "migrate",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("Applied: "), out.decode()

    conn = await asyncpg.connect(empty_database)
    try:
        versions = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert versions == len(list((ROOT / "dispatch_engine" / "migrations").glob("*.sql")))
        for table in ("users", "senders", "campaigns", "dispatches", "ledger"):
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table), table
    finally:
        await conn.close()

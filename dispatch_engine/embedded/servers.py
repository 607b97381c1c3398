"""EmbeddedServers: one owner of a private PostgreSQL and Redis under a data folder."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from .binaries import pick_postgres, pick_redis
from .errors import EmbeddedError
from .postgres import DATABASE, create_database, postgres_ready, start_postgres
from .processes import (
    PG_STOP_SIGNALS,
    REDIS_STOP_SIGNALS,
    alive,
    cmdline,
    pick_port,
    stop_process,
    wait_ready,
)
from .redis import redis_ready, start_redis
from .state import EmbeddedURLs, acquire_lock, credentials, read_json, write_private

log = logging.getLogger(__name__)


class EmbeddedServers:
    """Owns a private PostgreSQL and Redis-compatible server under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        shown = str(data_dir)
        self._shown = shown if Path(shown).is_absolute() or shown.startswith(".") else f"./{shown}"
        self.data_dir = Path(data_dir).absolute()
        self._lock_fd: int | None = None
        self._pg: subprocess.Popen[bytes] | None = None
        self._redis: subprocess.Popen[bytes] | None = None
        self._urls: EmbeddedURLs | None = None
        self._creds: dict[str, str] = {}

    @property
    def urls(self) -> EmbeddedURLs:
        if self._urls is None:
            raise EmbeddedError(f"the embedded servers for {self._shown} are not running")
        return self._urls

    def __enter__(self) -> EmbeddedServers:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> EmbeddedURLs:
        """Start both servers (reusing the data and ports of earlier runs) and wait until ready."""
        if self._urls is not None:
            return self._urls
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = acquire_lock(self.data_dir, self._shown)
        try:
            self._urls = self._start_locked()
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)  # do not orphan the servers if the owner forgets stop()
        return self._urls

    def stop(self) -> None:
        """Shut both servers down cleanly, wait for them to exit and release the data folder."""
        atexit.unregister(self.stop)
        try:
            if self._redis is not None:
                stop_process(self._redis.pid, REDIS_STOP_SIGNALS, "Redis", self._redis)
                self._redis = None
            if self._pg is not None:
                stop_process(self._pg.pid, PG_STOP_SIGNALS, "PostgreSQL", self._pg)
                self._pg = None
            if self._urls is not None:
                self._write_state(running=False)
                self._urls = None
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def restart_postgres(self) -> None:
        """Stop PostgreSQL (fast shutdown) and start it again on the same port and data."""
        if self._pg is None or self._urls is None:
            raise EmbeddedError(f"the embedded servers for {self._shown} are not running")
        stop_process(self._pg.pid, PG_STOP_SIGNALS, "PostgreSQL", self._pg)
        port = int(self._urls.database_url.rsplit(":", 1)[1].split("/")[0])
        pg = pick_postgres(self.data_dir / "postgres")
        self._pg = start_postgres(self.data_dir, pg, port, self._creds["postgres"])
        wait_ready(self._pg, postgres_ready, port, "PostgreSQL", self.data_dir / "postgres.log")
        self._write_state(running=True, postgres_port=port)

    def _start_locked(self) -> EmbeddedURLs:
        state = read_json(self.data_dir / "servers.json")
        self._stop_leftovers(state)
        pg = pick_postgres(self.data_dir / "postgres")
        redis_bin = pick_redis()
        source = "wheel" if pg.from_wheel else "system"
        log.info("using PostgreSQL %d (%s binaries in %s)", pg.major, source, pg.bin_dir)
        log.info("using Redis-compatible server %s", redis_bin)
        self._creds, password_set = credentials(self.data_dir)
        pg_pass, redis_pass = self._creds["postgres"], self._creds["redis"]
        pg_port = pick_port(state.get("postgres_port"))
        redis_port = pick_port(state.get("redis_port"), taken=pg_port)
        self._pg = start_postgres(
            self.data_dir, pg, pg_port, pg_pass, new_password=not password_set
        )
        self._redis = start_redis(self.data_dir, redis_bin, redis_port, redis_pass)
        wait_ready(self._pg, postgres_ready, pg_port, "PostgreSQL", self.data_dir / "postgres.log")
        redis_up = functools.partial(redis_ready, password=redis_pass)
        wait_ready(self._redis, redis_up, redis_port, "Redis", self.data_dir / "redis.log")
        create_database(pg_port, pg_pass)
        self._urls = EmbeddedURLs(
            database_url=f"postgresql://postgres:{pg_pass}@127.0.0.1:{pg_port}/{DATABASE}",
            redis_url=f"redis://:{redis_pass}@127.0.0.1:{redis_port}/0",
        )
        self._write_state(running=True, postgres_port=pg_port, redis_port=redis_port)
        return self._urls

    def _stop_leftovers(self, state: dict[str, Any]) -> None:
        # We hold the lock, so servers still running on this folder belong to a dead owner.
        pid = 0
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        if pid and pid != os.getpid() and alive(pid) and "postgres" in cmdline(pid):
            log.warning("stopping PostgreSQL (pid %d) left running by a previous owner", pid)
            stop_process(pid, PG_STOP_SIGNALS, "leftover PostgreSQL", None)
        pid = state.get("redis_pid") or 0
        running = isinstance(pid, int) and pid and pid != os.getpid() and alive(pid)
        if running and re.search(r"redis|valkey", cmdline(pid)):
            log.warning("stopping Redis (pid %d) left running by a previous owner", pid)
            stop_process(pid, REDIS_STOP_SIGNALS, "leftover Redis", None)

    def _write_state(self, running: bool, **ports: int) -> None:
        path = self.data_dir / "servers.json"
        state = read_json(path)
        state.update(ports)
        state.update(
            running=running,
            owner_pid=os.getpid(),
            database_url=self._urls.database_url if self._urls else state.get("database_url"),
            redis_url=self._urls.redis_url if self._urls else state.get("redis_url"),
            postgres_pid=self._pg.pid if self._pg and running else None,
            redis_pid=self._redis.pid if self._redis and running else None,
        )
        write_private(path, json.dumps(state, indent=2) + "\n")  # the URLs hold passwords

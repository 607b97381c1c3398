"""Chaos with real processes and servers: killed workers, a flushed Redis, a restarted
PostgreSQL, a misbehaving SMTP server. After each, every email is sent exactly once in the
ledger and the SMTP server received every Message-ID; resends are counted and reported.

The SMTP server is nodemailer's `smtp-server` (tests/support/smtp_peer.py): it announces PIPELINING,
so the faults reach the pipelined path, the one real providers get."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from dispatch_engine.embedded import EmbeddedServers

from .support.helpers import auth, wait_for
from .support.processes import Proc, run_cli
from .support.smtp_peer import SmtpPeer
from .support.smtp_sink import free_port

pytestmark = pytest.mark.timeout(300)
EMAILS = 400


@pytest.fixture(scope="module")
def chaos_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServers]:
    """Private servers of these tests alone: they restart PostgreSQL and flush Redis."""
    with EmbeddedServers(tmp_path_factory.mktemp("chaos")) as servers:
        yield servers


class Cluster:
    """An API, two workers and a sweeper as separate processes, sending into one SMTP sink."""

    def __init__(self, servers: EmbeddedServers, smtp: SmtpPeer, logs: Path) -> None:
        self.servers, self.smtp, self.logs = servers, smtp, logs
        self.api_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": servers.urls.database_url, "REDIS_URL": servers.urls.redis_url,
            "DISPATCH_DATA_DIR": str(logs), "DISPATCH_SECRET_KEY": "chaos-secret-key-0123456789",
            "DISPATCH_TRANSPORT": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none", "MAX_EMAILS_PER_HOUR": "1000000", "DISPATCH_LEASE_SECONDS": "2",
            "DISPATCH_RETRY_BASE_MS": "50", "DISPATCH_MAX_ATTEMPTS": "25",
            "WORKER_CONCURRENCY": "20", "DISPATCH_HOST": "127.0.0.1", "DISPATCH_PORT": "0",
        }  # fmt: skip
        self.procs: dict[str, Proc] = {}
        self.starts = 0

    def start(self, name: str, role: str) -> Proc:
        self.starts += 1
        env = self.env | ({"DISPATCH_PORT": str(self.api_port)} if role == "api" else {})
        proc = Proc(["run", "--role", role], env, self.logs / f"{name}-{self.starts}.log")
        proc.wait_for_output(r"Running \w+ on")
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.proc.poll() is None:
                proc.stop()


@pytest.fixture
async def cluster(chaos_servers: EmbeddedServers, tmp_path: Path) -> AsyncIterator[Cluster]:
    conn = await asyncpg.connect(chaos_servers.urls.database_url)
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    await conn.close()
    redis = Redis.from_url(chaos_servers.urls.redis_url)
    await redis.flushall()
    await redis.aclose()
    with SmtpPeer() as smtp:
        cluster = Cluster(chaos_servers, smtp, tmp_path)
        migrated = await asyncio.to_thread(run_cli, ["migrate"], cluster.env)
        assert migrated.returncode == 0, migrated.stderr
        for name, role in (("api", "api"), ("w1", "worker"), ("w2", "worker"),
                           ("sweeper", "sweeper")):  # fmt: skip
            await asyncio.to_thread(cluster.start, name, role)
        try:
            yield cluster
        finally:
            await asyncio.to_thread(cluster.stop_all)


async def _schedule(cluster: Cluster) -> None:
    made = await asyncio.to_thread(
        run_cli, ["token", "create", "--email", "chaos@example.com"], cluster.env
    )
    token = made.stdout.strip()
    payload = {"subject": "Chaos {{ n }}", "body": "Hello {{ email }}", "delay_between_ms": 10,
               "recipients": [{"email": f"c{i}@example.com", "vars": {"n": i}}
                              for i in range(EMAILS)]}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{cluster.api_port}/api/emails/schedule"
        async with session.post(url, json=payload, headers=auth(token)) as response:
            assert response.status == 201, await response.text()


async def _sent(cluster: Cluster) -> int:
    conn = await asyncpg.connect(cluster.servers.urls.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM dispatches WHERE status = 'sent'"))
    except (OSError, asyncpg.PostgresError):
        return -1  # PostgreSQL is restarting
    finally:
        await conn.close()


async def _check_exactly_once(cluster: Cluster, label: str) -> int:
    async def all_sent() -> bool:
        try:
            return await _sent(cluster) == EMAILS
        except (OSError, asyncpg.PostgresError):
            return False

    await wait_for(all_sent, within=180)
    conn = await asyncpg.connect(cluster.servers.urls.database_url)
    ledger = await conn.fetch("SELECT state, count(*) FROM ledger GROUP BY state")
    message_ids = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM dispatches")}
    await conn.close()
    assert dict((r["state"], r["count"]) for r in ledger) == {"sent": EMAILS}
    await asyncio.sleep(0.3)  # a resend in flight at the end, if any, is counted too
    received = cluster.smtp.message_ids()
    assert set(received) == message_ids, "the SMTP server must receive every Message-ID"
    twice = sum(n - 1 for n in received.values())
    print(f"[{label}] {EMAILS} emails, sent once each in the ledger; received twice: {twice}")
    return twice


async def _midway(cluster: Cluster, low: int, high: int) -> None:
    target = random.randint(low, high)

    async def reached() -> bool:
        return await _sent(cluster) >= target

    await wait_for(reached, within=60)


async def test_workers_killed_three_times(cluster: Cluster) -> None:
    await _schedule(cluster)
    for n in range(3):
        await _midway(cluster, 40 + n * 80, 80 + n * 80)
        victim = random.choice(["w1", "w2"])
        cluster.procs[victim].kill()  # SIGKILL at a random moment of the campaign
        await asyncio.to_thread(cluster.start, victim, "worker")
    twice = await _check_exactly_once(cluster, "3 x SIGKILL worker")
    assert twice <= 3 * 20, "only sends in flight at a kill may be received twice"


async def test_redis_flushed_mid_campaign(cluster: Cluster) -> None:
    await _schedule(cluster)
    await _midway(cluster, 60, 200)
    redis = Redis.from_url(cluster.servers.urls.redis_url)
    await redis.flushall()  # the queue, the leases and the pacing state are gone
    await redis.aclose()
    twice = await _check_exactly_once(cluster, "FLUSHALL")
    assert twice <= 2 * 20, "only sends in flight at the flush may be received twice"


async def test_postgresql_restarted_mid_campaign(cluster: Cluster) -> None:
    await _schedule(cluster)
    await _midway(cluster, 60, 200)
    await asyncio.to_thread(cluster.servers.restart_postgres)
    twice = await _check_exactly_once(cluster, "PostgreSQL restart")
    assert twice <= 2 * 20


async def test_smtp_server_that_rejects_and_drops(cluster: Cluster) -> None:
    cluster.smtp.set_faults(data_ratio=0.2, drop_ratio=0.03)  # after the pipelined DATA
    await _schedule(cluster)
    twice = await _check_exactly_once(cluster, "451 x 20 % + dropped connections")
    assert cluster.smtp.of("refused") and cluster.smtp.of("dropped")
    assert twice == 0, "a rejected or dropped message was not accepted: resending it is right"

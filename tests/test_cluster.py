"""The queue and the whole app on a real 3-master Redis Cluster started on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import cast

import pytest
from redis.asyncio import Redis, RedisCluster

from dispatch_engine.config import Settings
from dispatch_engine.queue import RedisQueue
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, poll_until, wait_for
from .support.smtp_sink import free_port

pytestmark = pytest.mark.timeout(180)


def _binary() -> str:
    for name in ("valkey-server", "redis-server"):
        if found := shutil.which(name):
            return found
    pytest.skip("no redis-server or valkey-server on PATH")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _binary()
    cli = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if cli is None:
        pytest.skip("no redis-cli to create the cluster")
    ports = _cluster_ports(3)
    procs = []
    for port in ports:
        folder = tmp_path_factory.mktemp(f"node{port}")
        procs.append(
            subprocess.Popen(
                [
                    server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                    "--dir",
                    str(folder),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for port in ports:
            _wait(partial(_ping, cli, port))
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait(lambda: all("cluster_state:ok" in _info(cli, p) for p in ports))
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus twin (port + 10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 <= 65535 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(cli: str, port: int) -> bool:
    return subprocess.run([cli, "-p", str(port), "ping"], capture_output=True).returncode == 0


def _info(cli: str, port: int) -> str:
    return subprocess.run(
        [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True
    ).stdout


def _node_of(cluster: RedisCluster, key: str) -> str:
    node = cluster.get_node_from_key(key)
    assert node is not None
    return node.name


def _wait(check: Callable[[], bool], within: float = 30) -> None:
    poll_until(check, within, lambda: "the cluster did not come up")


async def test_sharded_queue_claims_each_id_once_across_masters(cluster_url: str) -> None:
    clients = [cast(Redis, RedisCluster.from_url(cluster_url)) for _ in range(4)]
    await clients[0].flushall()
    queues = [RedisQueue(c, shards=6, lease_ms=60_000) for c in clients]
    seconds, micros = await clients[0].time()
    now = int(seconds) * 1000 + int(micros) // 1000
    for sender in range(1, 13):
        await queues[0].enqueue(sender, [(sender * 1000 + i, now - 1) for i in range(200)])
    cluster = cast(RedisCluster, clients[0])
    slots = {await cluster.cluster_keyslot(k.key("ready")) for k in queues[0].shards}
    nodes = {_node_of(cluster, k.key("ready")) for k in queues[0].shards}
    assert len(slots) == 6 and len(nodes) >= 2, "shards must spread over the masters"

    claimed: list[int] = []

    async def claimer(queue: RedisQueue) -> None:
        while (result := await queue.claim(25)).leases:
            claimed.extend(lease.dispatch_id for lease in result.leases)
            assert await queue.ack(result.leases) == []

    await asyncio.gather(*(claimer(q) for q in queues))
    counts = Counter(claimed)
    assert len(counts) == 12 * 200 and max(counts.values()) == 1
    for client in clients:
        await client.aclose()


async def test_the_app_sends_everything_on_a_cluster(
    cluster_url: str, make_client: Start, settings: Settings, store: Store
) -> None:
    redis = cast(Redis, RedisCluster.from_url(cluster_url))
    await redis.flushall()
    await redis.aclose()
    clustered = replace(settings, redis_url=cluster_url, redis_cluster=True, queue_shards=4)
    client = await make_client(clustered)
    campaigns = []
    for n in range(4):
        token = await new_token(store, f"user{n}@example.com")
        payload = {
            "subject": "s",
            "body": "b",
            "delay_between_ms": 5,
            "recipients": [f"u{n}.{i}@example.com" for i in range(50)],
        }
        response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
        assert response.status == 201, await response.text()
        campaigns.append((token, (await response.json())["campaign"]["id"]))

    async def all_sent() -> bool:
        return (
            await store.pool.fetchval("SELECT count(*) FROM dispatches WHERE status = 'sent'")
            == 200
        )

    await wait_for(all_sent, within=60)
    token, _ = campaigns[0]
    stats = await (await client.get("/api/stats", headers=auth(token))).json()
    assert stats["senders"][0]["queue_depth"] == 0
    assert await store.pool.fetchval("SELECT sum(deliveries) FROM captured_messages") == 200

"""Split roles behind a real load balancer: nginx in front of 2 API processes, 3 workers and a
sweeper; clients schedule 5,000 emails while an API and a worker are killed."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from dispatch_engine.store import Store

from .support.helpers import auth, new_token, wait_for
from .support.processes import Proc
from .support.smtp_sink import SmtpSink, free_port

pytestmark = pytest.mark.timeout(300)
NGINX = "/usr/sbin/nginx"
CLIENTS, CAMPAIGNS_EACH, RECIPIENTS = 10, 5, 100  # 5,000 emails


@pytest.fixture
def nginx_path() -> str:
    if shutil.which(NGINX) or os.path.exists(NGINX):
        return NGINX
    if os.environ.get("CI"):
        pytest.fail("nginx is missing in CI: `make system-deps` installs it")
    pytest.skip("nginx is not installed (make system-deps installs it as root)")


@pytest.fixture
def balancer(nginx_path: str, tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """nginx on a free port in front of two API ports (the processes come later)."""
    port, upstreams = free_port(), [free_port(), free_port()]
    servers = "\n".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstreams)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
user root;
worker_processes 1;
error_log {tmp_path}/nginx-error.log warn;
pid {tmp_path}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp_path}/body;
  proxy_temp_path {tmp_path}/proxy;
  upstream dispatch_api {{ {servers} }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 64m;
    location / {{
      proxy_pass http://dispatch_api;
      # A POST may go to the other API when one is down: Idempotency-Key makes that safe.
      proxy_next_upstream error timeout http_502 non_idempotent;
    }}
  }}
}}
""")
    proc = subprocess.Popen(
        [nginx_path, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    try:
        yield port, upstreams
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


async def test_scale_out_behind_nginx_survives_killed_api_and_worker(
    balancer: tuple[int, list[int]], env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    port, api_ports = balancer
    with SmtpSink() as smtp:
        role_env = env | {
            "DISPATCH_TRANSPORT": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
            "DISPATCH_LEASE_SECONDS": "2",
            "WORKER_CONCURRENCY": "50",
        }
        procs = (
            {
                f"api{n}": Proc(
                    ["run", "--role", "api"],
                    role_env | {"DISPATCH_PORT": str(p)},
                    tmp_path / f"api{n}.log",
                )
                for n, p in enumerate(api_ports)
            }
            | {
                f"worker{n}": Proc(
                    ["run", "--role", "worker"], role_env, tmp_path / f"worker{n}.log"
                )
                for n in range(3)
            }
            | {"sweeper": Proc(["run", "--role", "sweeper"], role_env, tmp_path / "sweeper.log")}
        )
        try:
            for proc in procs.values():
                await asyncio.to_thread(proc.wait_for_output, r"Running \w+ on")
            token = await new_token(store)
            base = f"http://127.0.0.1:{port}"
            created: list[int] = []
            killed = asyncio.Event()

            async def client(n: int) -> None:
                async with aiohttp.ClientSession() as session:
                    for c in range(CAMPAIGNS_EACH):
                        key = f"client{n}-campaign{c}-{secrets.token_hex(4)}"
                        payload = {
                            "subject": "Hi {{ email }}",
                            "body": "Hello",
                            "recipients": [f"c{n}.{c}.{i}@example.com" for i in range(RECIPIENTS)],
                        }
                        for _attempt in range(20):  # retry what the balancer could not place
                            try:
                                async with session.post(
                                    f"{base}/api/emails/schedule",
                                    json=payload,
                                    headers=auth(token) | {"Idempotency-Key": key},
                                ) as response:
                                    if response.status in (200, 201):
                                        created.append((await response.json())["campaign"]["id"])
                                        break
                                    assert response.status in (502, 503, 504), response.status
                            except aiohttp.ClientError:
                                pass
                            await asyncio.sleep(0.1)
                        if n == 0 and c == 2:
                            procs["api0"].kill()  # an API dies while clients keep posting
                            procs["worker0"].kill()  # and a worker, with sends in flight
                            killed.set()

            await asyncio.gather(*(client(n) for n in range(CLIENTS)))
            assert killed.is_set()
            assert len(set(created)) == CLIENTS * CAMPAIGNS_EACH, "one campaign per key"
            total = CLIENTS * CAMPAIGNS_EACH * RECIPIENTS

            async def all_received() -> bool:
                return len(smtp.sink.message_ids()) >= total

            try:
                await wait_for(all_received, within=60)
            except AssertionError:
                rows = await store.pool.fetch(
                    "SELECT status, attempts, last_error, count(*) FROM dispatches GROUP BY 1, 2, 3"
                )
                logs = {n: p.output()[-3000:] for n, p in procs.items()}
                raise AssertionError(f"{len(smtp.sink.message_ids())} {rows} {logs}") from None
            await asyncio.sleep(0.3)  # count a late duplicate too
            received = smtp.sink.message_ids()
            expected = {
                r["message_id"] for r in await store.pool.fetch("SELECT message_id FROM dispatches")
            }
            assert len(expected) == total and set(received) == expected
            twice = sum(n - 1 for n in received.values())
            print(f"scale-out: {total} emails through nginx, received twice: {twice}")
            assert twice <= 50, "only sends in flight in the killed worker may come twice"
        finally:
            for proc in procs.values():
                if proc.proc.poll() is None:
                    await asyncio.to_thread(proc.stop)

"""Real processes: `up` killed with SIGKILL mid-campaign, worker processes sharing a Redis."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import AppClient
from .support.helpers import auth, new_token, wait_for
from .support.processes import Proc, run_cli, without_urls
from .support.smtp_sink import SmtpSink, free_port

pytestmark = pytest.mark.timeout(240)


async def _get(session: aiohttp.ClientSession, url: str, token: str) -> dict:  # type: ignore[type-arg]
    async with session.get(url, headers=auth(token)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_up_killed_mid_campaign_delivers_the_rest_once(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "var"
    up_env = without_urls(env) | {"DISPATCH_DATA_DIR": str(data), "DISPATCH_PORT": str(port)}
    base = f"http://127.0.0.1:{port}"
    first = Proc(["up"], up_env, tmp_path / "up1.log")
    try:
        token = first.wait_for_output(r"API token:\s+(\S+)").group(1)
        recipients = [f"r{i}@example.com" for i in range(300)]
        payload = {
            "subject": "Hi",
            "body": "Hello {{ email }}",
            "recipients": recipients,
            "delay_between_ms": 20,
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base}/api/emails/schedule", json=payload, headers=auth(token)
            ) as response:
                assert response.status == 201, await response.text()
                campaign = (await response.json())["campaign"]["id"]

            async def some_sent() -> bool:
                detail = await _get(session, f"{base}/api/campaigns/{campaign}", token)
                return bool(detail["counts"]["sent"] >= 60)

            await wait_for(some_sent)
            first.kill()  # SIGKILL: no cleanup, leases held, private servers orphaned
            killed_at = datetime.now(UTC)

            second = Proc(["up"], up_env, tmp_path / "up2.log")
            try:
                assert second.wait_for_output(r"API token:\s+(\S+)").group(1) == token

                async def all_sent() -> bool:
                    detail = await _get(session, f"{base}/api/campaigns/{campaign}", token)
                    done = detail["counts"]["sent"] == 300 and detail["status"] == "completed"
                    return bool(done)

                # The CLI works against the private servers of the running `up`.
                made = await asyncio.to_thread(
                    run_cli, ["token", "create", "--email", "eve@example.com"], up_env
                )
                assert made.returncode == 0, made.stderr
                me = await _get(session, f"{base}/api/me", made.stdout.strip())
                assert me["email"] == "eve@example.com"
                migrated = await asyncio.to_thread(run_cli, ["migrate"], up_env)
                assert migrated.returncode == 0 and "up to date" in migrated.stdout
                twice = await asyncio.to_thread(run_cli, ["up"], up_env | {"DISPATCH_PORT": "0"})
                assert twice.returncode == 2
                assert "in use by another dispatch-engine" in twice.stderr
                assert "Traceback" not in twice.stderr

                await wait_for(all_sent, within=120)
                inbox = await _get(session, f"{base}/api/inbox?limit=500", token)
                after = [
                    m
                    for m in inbox["items"]
                    if datetime.fromisoformat(m["received_at"]) > killed_at
                ]
                assert after, "the kill came too late: the restarted up had nothing left to send"
                assert sorted(m["to"][0] for m in inbox["items"]) == sorted(recipients)
                resent = sum(m["deliveries"] - 1 for m in inbox["items"])
                # Only sends in flight at the kill may arrive twice (and are dropped by id).
                print(f"resent after SIGKILL: {resent}")
                assert resent <= 50
                detail = await _get(session, f"{base}/api/campaigns/{campaign}", token)
                assert detail["status"] == "completed"
            finally:
                assert second.stop() == 0, second.output()
        assert "Traceback" not in second.output()
    finally:
        if first.proc.poll() is None:
            first.stop()


async def test_two_worker_processes_send_each_email_once(
    make_client: object, settings: Settings, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    with SmtpSink() as smtp:
        worker_env = env | {
            "DISPATCH_TRANSPORT": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
        }
        workers = [
            Proc(["run", "--role", "worker"], worker_env, tmp_path / f"worker{n}.log")
            for n in range(2)
        ]
        try:
            for worker in workers:
                worker.wait_for_output(r"Running worker on")
            api_settings = replace(settings, transport="smtp")
            client: AppClient = await make_client(api_settings, frozenset({"api"}))  # type: ignore[operator]
            token = await new_token(store)
            recipients = [f"w{i}@example.com" for i in range(1000)]
            response = await client.post(
                "/api/emails/schedule",
                json={"subject": "Hi", "body": "Hello", "recipients": recipients},
                headers=auth(token),
            )
            assert response.status == 201

            async def all_received() -> bool:
                return len(smtp.sink.message_ids()) >= 1000

            async def all_recorded() -> bool:  # a delivery is recorded just after it happens
                sql = "SELECT count(*) FROM dispatches WHERE status = 'sent'"
                return bool(await store.pool.fetchval(sql) == 1000)

            await wait_for(all_received, within=120)
            await wait_for(all_recorded)
            await asyncio.sleep(0.2)  # let a duplicate, if any, arrive before counting
            received = smtp.sink.message_ids()
            assert len(received) == 1000 and max(received.values()) == 1
        finally:
            for worker in workers:
                assert worker.stop() == 0, worker.output()

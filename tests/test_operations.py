"""What operators rely on: /metrics, role-limited processes, JSON logs."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.processes import Proc
from .support.smtp_sink import SmtpSink


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_what_was_sent_and_what_waits(make_client: Start, store: Store) -> None:
    client = await make_client()
    token = await new_token(store)
    now = {"subject": "s", "body": "b", "recipients": [f"m{i}@example.com" for i in range(12)]}
    later = {
        "subject": "s",
        "body": "b",
        "start_at": "2099-01-01T00:00:00Z",
        "recipients": [f"l{i}@example.com" for i in range(3)],
    }
    for payload in (now, later):
        response = await client.post("/api/emails/schedule", json=payload, headers=auth(token))
        assert response.status == 201

    async def sent() -> bool:
        metrics = samples(await (await client.get("/metrics")).text())
        return metrics.get(("dispatch_emails_total", (("status", "sent"),))) == 12

    await wait_for(sent)
    metrics = samples(await (await client.get("/metrics")).text())
    assert metrics[("dispatch_due_lag_seconds_count", ())] == 12
    assert metrics[("dispatch_transport_seconds_count", (("transport", "capture"),))] == 12
    sender = await store.pool.fetchval("SELECT id FROM senders")
    assert metrics[("dispatch_queue_depth", (("sender", str(sender)),))] == 3
    assert metrics[("dispatch_sends_in_flight", ())] == 0


async def test_a_worker_process_serves_only_health_and_metrics_and_logs_json(
    env: dict[str, str], tmp_path: Path, make_client: Start, settings: Settings, store: Store
) -> None:
    with SmtpSink() as smtp:
        smtp.sink.faults["nobody@example.com"] = ("550 5.1.1 no such user", 1)
        worker_env = env | {
            "DISPATCH_LOG_FORMAT": "json",
            "DISPATCH_TRANSPORT": "smtp",
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
        }
        worker = Proc(["run", "--role", "worker"], worker_env, tmp_path / "worker.log")
        try:
            port = int(worker.wait_for_output(r"Running worker on http://[\d.]+:(\d+)").group(1))
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{port}"
                for path, status in (
                    ("/healthz", 200),
                    ("/readyz", 200),
                    ("/metrics", 200),
                    ("/", 404),
                    ("/api/me", 404),
                ):
                    async with session.get(base + path) as response:
                        assert response.status == status, path
            api = await make_client(replace(settings, transport="smtp"), frozenset({"api"}))
            token = await new_token(store)
            payload = {"subject": "s", "body": "b", "recipients": ["nobody@example.com"]}
            await api.post("/api/emails/schedule", json=payload, headers=auth(token))

            async def logged() -> bool:
                return "no such user" in worker.output()

            await wait_for(logged)
            await asyncio.sleep(0.1)  # the line may still be in the pipe
        finally:
            assert worker.stop() == 0
        lines = [
            orjson.loads(line) for line in worker.output().splitlines() if line.startswith("{")
        ]
        failure = next(entry for entry in lines if "no such user" in entry["message"])
        assert failure["level"] == "warning" and failure["logger"] == "dispatch_engine.worker"
        dispatch = await store.pool.fetchrow("SELECT id, campaign_id FROM dispatches")
        assert dispatch is not None
        assert failure["dispatch_id"] == dispatch["id"]
        assert failure["campaign_id"] == dispatch["campaign_id"]

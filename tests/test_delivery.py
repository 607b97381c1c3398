"""Delivery through the SMTP transport into a real SMTP server: ledger, Message-ID, retries."""

from __future__ import annotations

from dataclasses import replace

from dispatch_engine.config import Settings
from dispatch_engine.message_ids import message_id_for
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import SmtpSink


def smtp_settings(settings: Settings, port: int) -> Settings:
    return replace(settings, transport="smtp", retry_base_ms=50, max_attempts=3).with_environ(
        SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_TLS="none"
    )


async def test_smtp_delivery_records_ledger_and_retries(
    make_client: Start, store: Store, settings: Settings
) -> None:
    with SmtpSink() as smtp:
        sink = smtp.sink
        sink.faults["flaky@example.com"] = ("451 4.3.0 temporary failure", 2)
        sink.faults["gone@example.com"] = ("550 5.1.1 no such user here", 99)
        sink.faults["stuck@example.com"] = ("452 4.2.2 mailbox full", 99)
        client = await make_client(smtp_settings(settings, smtp.port))
        headers = auth(await new_token(store))
        good = [f"r{i}@example.com" for i in range(50)]
        payload = {
            "subject": "Hi",
            "body": "Hello {{ email }}",
            "recipients": [*good, "flaky@example.com", "gone@example.com", "stuck@example.com"],
        }
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert response.status == 201
        campaign = (await response.json())["campaign"]["id"]

        async def finished() -> bool:
            detail = await (await client.get(f"/api/campaigns/{campaign}", headers=headers)).json()
            return bool(detail["status"] == "completed")

        await wait_for(finished)
        rows = {
            r["recipient"]: r
            for r in await store.pool.fetch(
                "SELECT recipient, status, attempts, last_error, message_id, idempotency_key"
                " FROM dispatches"
            )
        }
        assert all(rows[r]["status"] == "sent" for r in good)
        assert rows["flaky@example.com"]["status"] == "sent"
        assert rows["flaky@example.com"]["attempts"] == 3
        assert rows["gone@example.com"]["status"] == "bounced"  # a hard bounce at RCPT
        assert "550 5.1.1 no such user here" in rows["gone@example.com"]["last_error"]
        assert rows["gone@example.com"]["attempts"] == 1
        assert rows["stuck@example.com"]["status"] == "failed"
        assert "gave up after 3 attempts" in rows["stuck@example.com"]["last_error"]

        received = sink.message_ids()
        assert len(received) == 51 and max(received.values()) == 1
        for recipient in [*good, "flaky@example.com"]:
            row = rows[recipient]
            assert row["message_id"] == message_id_for(row["idempotency_key"], "ada@example.com")
            assert received[row["message_id"]] == 1
        ledger = await store.pool.fetch("SELECT state, count(*) FROM ledger GROUP BY state")
        assert dict((r["state"], r["count"]) for r in ledger) == {"sent": 51, "sending": 2}

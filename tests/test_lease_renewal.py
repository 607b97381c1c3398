"""A send slower than its lease keeps the lease: the worker renews it while the SMTP server
takes its time, so the sweeper never hands the email to another claim (no second copy)."""

from __future__ import annotations

from dataclasses import replace

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import SmtpSink
from .test_delivery import smtp_settings

LEASE_S = 2  # the sweeper reaps expired leases every second (its floor)


async def test_a_send_that_outlasts_its_lease_is_renewed_and_sent_once(
    make_client: Start, store: Store, settings: Settings
) -> None:
    with SmtpSink() as smtp:
        smtp.sink.data_delay_s = 2.5 * LEASE_S  # the server holds DATA over two leases
        client = await make_client(
            replace(smtp_settings(settings, smtp.port), lease_seconds=LEASE_S)
        )
        payload = {"subject": "s", "body": "b", "recipients": ["slow@example.com"]}
        response = await client.post(
            "/api/emails/schedule", json=payload, headers=auth(await new_token(store))
        )
        assert response.status == 201

        async def sent() -> bool:
            return bool(await store.pool.fetchval("SELECT status = 'sent' FROM dispatches"))

        await wait_for(sent)
        assert smtp.sink.data_started == 1, "the lease expired mid-send: a second claim sent it"
        assert list(smtp.sink.message_ids().values()) == [1]
        assert await store.pool.fetchval("SELECT attempts FROM dispatches") == 1

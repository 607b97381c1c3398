"""/metrics counts each recorded result once, by what it became: sent, failed, or retried.

Through the public path only (the schedule API, the worker, a real SMTP server answering
per recipient, the /metrics page), so it holds whatever the worker's stages look like.
Results of one recorded batch mix retries, failures and sends.
"""

from __future__ import annotations

from dispatch_engine.config import Settings
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token, wait_for
from .support.smtp_sink import SmtpSink
from .test_delivery import smtp_settings
from .test_operations import samples


async def test_metrics_count_sends_failures_and_retries_as_recorded(
    make_client: Start, store: Store, settings: Settings
) -> None:
    with SmtpSink() as smtp:
        smtp.sink.faults["flaky@example.com"] = ("451 4.3.0 temporary failure", 2)
        smtp.sink.faults["gone@example.com"] = ("550 5.1.1 no such user here", 99)
        smtp.sink.faults["stuck@example.com"] = ("452 4.2.2 mailbox full", 99)
        client = await make_client(smtp_settings(settings, smtp.port))
        headers = auth(await new_token(store))
        recipients = ["flaky@example.com", "stuck@example.com", "gone@example.com",
                      *(f"r{i}@example.com" for i in range(30))]  # fmt: skip
        payload = {"subject": "Hi", "body": "Hello", "recipients": recipients}
        response = await client.post("/api/emails/schedule", json=payload, headers=headers)
        assert response.status == 201
        campaign = (await response.json())["campaign"]["id"]

        async def completed() -> bool:
            detail = await (await client.get(f"/api/campaigns/{campaign}", headers=headers)).json()
            return bool(detail["status"] == "completed")

        await wait_for(completed)
        metrics = samples(await (await client.get("/metrics")).text())
    assert metrics[("dispatch_emails_total", (("status", "sent"),))] == 31
    assert metrics[("dispatch_emails_total", (("status", "failed"),))] == 1
    assert metrics[("dispatch_emails_total", (("status", "bounced"),))] == 1  # gone: 5.1.1
    # flaky: 2 refusals then sent; stuck: 2 retries, then it gives up at the 3rd attempt
    assert metrics[("dispatch_retries_total", ())] == 4

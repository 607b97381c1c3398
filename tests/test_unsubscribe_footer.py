"""`{{ unsubscribe_url }}` in templates, and the footer a body without it gets; only a sender
marked transactional may leave the footer out (never the headers). Messages are read back
from the capture inbox and parsed by `email`."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

from dispatch_engine.config import Settings
from dispatch_engine.consent.unsubscribe import UnsubscribeLinks
from dispatch_engine.models import CampaignContent, Sender
from dispatch_engine.render import CompiledCampaign
from dispatch_engine.store import Store

from .support.app_client import AppClient, Start
from .support.helpers import auth, new_token, wait_for

HTML = "<html><body><p>Hello {{ email }}</p></body></html>"


async def _sender(client: AppClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {"from_address": "news@news.example", "transport": "capture", **fields}
    response = await client.post("/api/senders", json=body, headers=headers)
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def _sent(
    client: AppClient, store: Store, headers: dict[str, str], sender: int, **content: Any
) -> EmailMessage:
    payload = {"subject": "News", "recipients": ["reader@example.com"], "sender": sender, **content}
    response = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert response.status == 201, await response.text()
    campaign = (await response.json())["campaign"]["id"]

    async def captured() -> bool:
        return bool(
            await store.pool.fetchval(
                """SELECT count(*) FROM captured_messages c JOIN dispatches d
               ON d.id = c.dispatch_id WHERE d.campaign_id = $1""",
                campaign,
            )
        )

    await wait_for(captured)
    raw = await store.pool.fetchval(
        """SELECT c.raw FROM captured_messages c JOIN dispatches d ON d.id = c.dispatch_id
           WHERE d.campaign_id = $1""",
        campaign,
    )
    return email.message_from_bytes(raw, policy=email.policy.default)


def _parts(message: EmailMessage) -> tuple[str, str | None, str]:
    """(text body, html body or None, the one-click URL)."""
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    url = str(message["List-Unsubscribe"]).split(">")[0].lstrip("<")
    return (
        text.get_content(),
        None if html is None else html.get_content(),
        url,
    )


async def test_a_body_without_the_link_gets_the_footer_and_one_with_it_does_not(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    sender = (await _sender(client, headers))["id"]

    text, html, url = _parts(await _sent(client, store, headers, sender, body="Hello", html=HTML))
    assert text.rstrip().endswith(f"Unsubscribe: {url}"), text
    assert html is not None
    assert f'<a href="{url}">{url}</a>' in html
    assert html.index(url) < html.index("</body>"), "the footer goes inside the body"

    text, html, url = _parts(
        await _sent(
            client,
            store,
            headers,
            sender,
            body="Bye: {{ unsubscribe_url }}",
            html='<p><a href="{{ unsubscribe_url }}">Leave</a></p>',
        )
    )
    assert text == f"Bye: {url}", "the link is in the body: no footer"
    assert html is not None and html.count(url) == 1

    # The text names the link, the HTML does not: only the HTML part gets the footer.
    text, html, url = _parts(
        await _sent(client, store, headers, sender, body="Bye: {{ unsubscribe_url }}", html=HTML)
    )
    assert text == f"Bye: {url}"
    assert html is not None and f'<a href="{url}">' in html


async def test_a_template_that_names_the_link_but_does_not_show_it_still_gets_the_footer(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    sender = (await _sender(client, headers))["id"]
    hidden = "Hello{% if false %} {{ unsubscribe_url }}{% endif %}"
    text, _, url = _parts(await _sent(client, store, headers, sender, body=hidden))
    assert text.rstrip().endswith(f"Unsubscribe: {url}"), text


async def test_the_footer_is_the_operators_setting(
    make_client: Start, settings: Settings, store: Store
) -> None:
    configured = settings.with_environ(
        DISPATCH_UNSUBSCRIBE_FOOTER="Don't want these? <Leave here>: {url}"
    )
    client = await make_client(configured)
    headers = auth(await new_token(store, "owner@news.example"))
    sender = (await _sender(client, headers))["id"]
    text, html, url = _parts(await _sent(client, store, headers, sender, body="Hi", html=HTML))
    assert text.rstrip().endswith(f"Don't want these? <Leave here>: {url}")
    assert html is not None
    assert f'Don&#39;t want these? &lt;Leave here&gt;: <a href="{url}">' in html


async def test_only_a_transactional_sender_leaves_the_footer_out_never_the_headers(
    make_client: Start, settings: Settings, store: Store
) -> None:
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    made = await _sender(client, headers, transactional=True)
    assert made["transactional"] is True
    message = await _sent(client, store, headers, made["id"], body="Your receipt", html=HTML)
    text, html, url = _parts(message)
    assert text == "Your receipt" and html is not None and url not in html
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert url.startswith(f"{settings.public_url}/u/")

    # Turned off again (PATCH): its next campaign's bodies get the footer.
    patched = await client.patch(
        f"/api/senders/{made['id']}", json={"transactional": False}, headers=headers
    )
    assert (await patched.json())["transactional"] is False
    text, _, url = _parts(await _sent(client, store, headers, made["id"], body="News"))
    assert text.rstrip().endswith(f"Unsubscribe: {url}")

    # A sender is not transactional unless told, and only a boolean tells it.
    other = await _sender(client, headers, from_address="other@news.example")
    assert other["transactional"] is False
    for bad in ("yes", 1, None, "true", [True]):
        answer = await client.post(
            "/api/senders",
            headers=headers,
            json={"from_address": "bad@news.example", "transport": "capture", "transactional": bad},
        )
        assert answer.status == 422, bad
        assert (await answer.json())["error"]["field"] == "transactional"


async def test_the_schedule_time_check_and_the_preview_know_the_link(
    make_client: Start, settings: Settings, store: Store
) -> None:
    """`{{ unsubscribe_url }}` is a known variable: scheduling and the compose preview take
    it, where an unknown name is refused."""
    client = await make_client()
    headers = auth(await new_token(store, "owner@news.example"))
    payload = {
        "subject": "News",
        "body": "{{ unsubscribe_url | upper }}",
        "recipients": ["reader@example.com"],
    }
    scheduled = await client.post("/api/emails/schedule", json=payload, headers=headers)
    assert scheduled.status == 201, await scheduled.text()
    unknown = await client.post(
        "/api/emails/schedule", headers=headers, json={**payload, "body": "{{ unsubscribe_link }}"}
    )
    assert unknown.status == 422
    preview = await client.post(
        "/api/compose/preview",
        headers=headers,
        json={
            "subject": "s",
            "body": "Leave: {{ unsubscribe_url }}",
            "recipient": {"email": "reader@example.com", "vars": {"unsubscribe_url": "evil"}},
        },
    )
    assert preview.status == 200, await preview.text()
    assert (await preview.json())["body"].startswith("Leave: https://")


def test_no_header_line_carries_a_raw_line_break_whatever_the_base_url() -> None:
    """The link is percent-encoded into the header: a base URL with CR/LF, spaces or
    non-ASCII cannot add a header or break one."""
    hostile = Settings(
        base_url="https://news.example/a b\r\nBcc: x@evil.example/é",
        secret_key="k" * 32,
    ).with_environ(DISPATCH_UNSUBSCRIBE_MAILTO="unsub+list@news.example")
    unsubscribe = UnsubscribeLinks(hostile).for_dispatch(42)
    lines = unsubscribe.head.split(b"\r\n")
    assert lines[-1] == b"" and all(b"\r" not in ln and b"\n" not in ln for ln in lines)
    assert [ln.split(b":")[0] for ln in lines[:-1] if not ln.startswith(b" ")] == [
        b"List-Unsubscribe",
        b"List-Unsubscribe-Post",
    ]
    assert unsubscribe.head.isascii() and b"Bcc: " not in unsubscribe.head
    content = CampaignContent(7, 1, 1, "Hi", "Hello {{ unsubscribe_url }}", None, 0, None)
    sender = Sender(1, 1, "news@news.example", "News", None, "capture", {}, 50, 0)
    _, raw = CompiledCampaign(content, sender).render(
        "ada@example.com", {"unsubscribe_url": "\r\nBcc: y@own.example"}, "<m@x>", unsubscribe
    )
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Bcc"] is None and b"own.example" not in raw, "a recipient cannot set their link"
    assert unsubscribe.url in parsed.get_content()

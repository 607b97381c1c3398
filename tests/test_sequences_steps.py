"""The `steps` of a schedule request: limits and templates checked like the first email's,
each error naming its field (`steps[1].body`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from dispatch_engine.errors import ValidationError
from dispatch_engine.models import (
    CampaignContent,
    CampaignStatus,
    DispatchJob,
    DispatchStatus,
    Sender,
    StepContent,
)
from dispatch_engine.sequences.compiled import compiled_for, render_email
from dispatch_engine.sequences.steps import parse_steps
from dispatch_engine.store import Store

from .support.app_client import Start
from .support.helpers import auth, new_token

STEP = {"after_days": 2, "body": "again"}
BOMB = "{% for c in 'x' * 100000 %}{% for d in 'y' * 100000 %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ("soon", "steps"),
        ([STEP] * 11, "steps"),
        (["x"], "steps[0]"),
        ([STEP, {"body": "b"}], "steps[1].after_days"),
        ([{"after_days": 0, "body": "b"}], "steps[0].after_days"),
        ([{"after_days": 366, "body": "b"}], "steps[0].after_days"),
        ([{"after_days": True, "body": "b"}], "steps[0].after_days"),
        ([{"after_days": 1, "body": "b", "business_days": "yes"}], "steps[0].business_days"),
        ([STEP, {"after_days": 1}], "steps[1].body"),
        ([{"after_days": 1, "body": "b", "subject": "a\r\nBcc: x@y.z"}], "steps[0].subject"),
        ([{"after_days": 1, "body": "x" * 1_000_001}], "steps[0].body"),
        ([{"after_days": 1, "body": "b", "when": "later"}], "steps[0].when"),
    ],
)
def test_a_bad_step_is_refused_naming_its_field(steps: Any, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_steps(steps)
    assert refused.value.field == field


def test_steps_in_order_with_their_defaults() -> None:
    first, second = parse_steps(
        [STEP, {"after_days": 3, "business_days": True, "subject": "S", "body": "B", "html": "<p>"}]
    )
    assert (first.step, first.after_days, first.business_days, first.subject) == (1, 2, False, None)
    assert (second.step, second.business_days, second.subject, second.html) == (2, True, "S", "<p>")
    assert parse_steps('[{"after_days": 1, "body": "b"}]')[0].body == "b"  # a form's JSON text
    assert parse_steps(None) == ()


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"after_days": 1, "body": "{% for %}"}, "steps[1].body"),
        ({"after_days": 1, "body": "hi {{ missing }}"}, "steps[1].body"),
        ({"after_days": 1, "body": "b", "subject": "{{ name"}, "steps[1].subject"),
        ({"after_days": 1, "body": "b", "html": "{{ ''.__class__ }}"}, "steps[1].html"),
        ({"after_days": 1, "body": BOMB}, "steps[1].body"),  # over the work limit
    ],
)
async def test_a_step_template_is_compiled_and_rendered_for_the_first_recipient(
    make_client: Start, store: Store, step: dict[str, Any], field: str
) -> None:
    client = await make_client(roles={"api"})
    payload = {
        "subject": "Hi {{ name }}",
        "body": "b",
        "recipients": [{"email": "a@example.com", "vars": {"name": "A"}}],
        "steps": [STEP, step],
    }
    response = await client.post(
        "/api/emails/schedule", json=payload, headers=auth(await new_token(store))
    )
    assert response.status == 422, await response.text()
    error = (await response.json())["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}: ")
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0


def test_a_follow_up_renders_threaded_with_the_re_subject() -> None:
    sender = Sender(1, 1, "me@example.com", "Me", None, "capture", {}, 10, 0)
    content = CampaignContent(
        1, 1, 1, "Hi {{ name }}", "one", None, 0, None,
        steps=(StepContent(1, None, "two {{ name }}", None),),
    )  # fmt: skip
    compiled = compiled_for(content, sender)
    first = "<first-went-out-as@old-sender.example>"  # a pool may have moved the recipient since
    job = DispatchJob(
        7, 1, 1, 1, "a@example.com", {"name": "A"}, DispatchStatus.SCHEDULED,
        CampaignStatus.RUNNING, b"k" * 32, 0, datetime.now(UTC), step=1, thread_message_id=first,
    )  # fmt: skip
    subject, raw = render_email(compiled, job, "<m2@example.com>", None)
    assert subject == "Re: Hi A"
    assert (
        f"Message-ID: <m2@example.com>\r\nIn-Reply-To: {first}\r\nReferences: {first}\r\n".encode()
        in raw
    )
    assert b"two A" in raw
    subject, raw = render_email(
        compiled, replace(job, step=0, thread_message_id=None), "<m1@example.com>", None
    )
    assert subject == "Hi A" and b"In-Reply-To" not in raw

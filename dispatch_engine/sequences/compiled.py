"""A campaign with follow-ups, compiled once per worker process: each (campaign, step) pair.

Each follow-up is compiled as a campaign of its own (its subject, or "Re: " + the first
subject, its body and html), so it gets the same sandbox, limits, unsubscribe headers and
footer as the first email; `render_email` then threads it to the first email.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..models import CampaignContent, DispatchJob, Sender
from ..render import CompiledCampaign, TemplateProblem


class CompiledSequence(CompiledCampaign):
    """The first email as any campaign's, and each follow-up's own compiled templates."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.steps: dict[int, CompiledCampaign] = {}
        for s in self.campaign.steps:
            content = replace(
                self.campaign,
                subject=s.subject if s.subject is not None else "Re: " + self.campaign.subject,
                body_text=s.body_text,
                body_html=s.body_html,
                steps=(),
            )
            try:
                self.steps[s.step] = CompiledCampaign(content, self.sender)
            except TemplateProblem as exc:  # named as the request named it: steps[0].body
                field = f"steps[{s.step - 1}].{exc.field}"
                message = str(exc).removeprefix(f"{exc.field}: ")
                raise TemplateProblem(field, f"{field}: {message}") from None

    def as_sender(self, sender: Sender) -> CompiledCampaign:
        """A pool's other sender sends the follow-ups too (their From, Reply-To, footer)."""
        other = super().as_sender(sender)
        assert isinstance(other, CompiledSequence)
        other.steps = {n: step.as_sender(sender) for n, step in self.steps.items()}
        return other


def compiled_for(content: CampaignContent, sender: Sender) -> CompiledCampaign:
    """What the worker compiles for a campaign: with its steps when it has any."""
    return (CompiledSequence if content.steps else CompiledCampaign)(content, sender)


def render_email(
    compiled: CompiledCampaign, job: DispatchJob, message_id: str, unsubscribe: Any
) -> tuple[str, bytes]:
    """(subject, raw bytes) of a job: the first email, or follow-up `job.step` with its own
    templates and `In-Reply-To` / `References` naming the first email (RFC 5322 3.6.4)."""
    if not job.step:
        return compiled.render(job.recipient, job.vars, message_id, unsubscribe)
    if not isinstance(compiled, CompiledSequence) or job.step not in compiled.steps:
        raise ValueError(f"the campaign has no step {job.step}")
    subject, raw = compiled.steps[job.step].render(job.recipient, job.vars, message_id, unsubscribe)
    first = job.thread_message_id
    if first is None:
        return subject, raw
    # The header line we wrote (a header value never holds CRLF, so this is the first one).
    line = f"\r\nMessage-ID: {message_id}\r\n".encode()
    thread = f"In-Reply-To: {first}\r\nReferences: {first}\r\n".encode()
    return subject, raw.replace(line, line + thread, 1)

"""A campaign with follow-ups, compiled once per worker process: each (campaign, step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..consent.unsubscribe import VARIABLE as UNSUBSCRIBE_VARIABLE
from ..models import CampaignContent, Sender, StepContent
from ..render import CompiledCampaign, Renderer, compile_template
from ..render import _problem as problem  # the first step's own wording of each error
from ..render import _render_capped as capped  # stops as soon as the output passes the cap
from ..sandbox import budget


@dataclass(frozen=True)
class CompiledStep:
    """A follow-up's templates; `subject` None: "Re: " + the first step's rendered subject."""

    subject: Renderer | None
    text: Renderer
    html: Renderer | None


def _field(step: StepContent, source: str | None, name: str) -> Renderer | None:
    try:
        return None if source is None else compile_template(source, html=name == "html")
    except Exception as exc:  # named as the request named it: steps[0].body
        raise problem(f"steps[{step.step - 1}].{name}", exc) from None


def compile_step(step: StepContent) -> CompiledStep:
    text = _field(step, step.body_text, "body")
    assert text is not None
    return CompiledStep(
        _field(step, step.subject, "subject"), text, _field(step, step.body_html, "html")
    )


class CompiledSequence(CompiledCampaign):
    """The first email as any campaign's, and each follow-up's own templates."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._steps = {s.step: compile_step(s) for s in self.campaign.steps}
        # The footer looks for the link in a body only where its template names it.
        self._text_names_link |= any(
            UNSUBSCRIBE_VARIABLE in s.body_text for s in self.campaign.steps
        )
        self._html_names_link |= any(
            UNSUBSCRIBE_VARIABLE in (s.body_html or "") for s in self.campaign.steps
        )

    def _render_step(self, step: int, context: dict[str, Any]) -> tuple[str, str, str | None]:
        follow = self._steps.get(step)
        if follow is None:
            raise ValueError(f"the campaign has no step {step}")
        with budget():
            if follow.subject is None:
                subject = "Re: " + capped(self._subject, context, "subject")
            else:
                subject = capped(follow.subject, context, "subject")
            text = capped(follow.text, context, "body")
            html = None if follow.html is None else capped(follow.html, context, "html")
        return subject, text, html


def compiled_for(content: CampaignContent, sender: Sender) -> CompiledCampaign:
    """What the worker compiles for a campaign: with its steps when it has any."""
    return (CompiledSequence if content.steps else CompiledCampaign)(content, sender)

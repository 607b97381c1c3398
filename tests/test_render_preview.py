"""The Compose preview: what one recipient would get, rendered as the worker renders it, or
a problem naming the field and why (the page shows it beside that field)."""

from __future__ import annotations

import pytest

from dispatch_engine.render import TemplateProblem, render_preview

ADA = {"name": "Ada", "email": "ada@example.com"}


def _problem(templates: dict[str, str]) -> TemplateProblem:
    with pytest.raises(TemplateProblem) as caught:
        render_preview(templates, ADA)
    return caught.value


def test_the_preview_renders_every_field_for_the_recipient() -> None:
    templates = {"subject": "Hi {{ name }}", "body": "Dear {{ name|upper }}, {{ email }}",
                 "html": "<p>{{ name }} & co</p>"}  # fmt: skip
    assert render_preview(templates, ADA) == {
        "subject": "Hi Ada",
        "body": "Dear ADA, ada@example.com",
        "html": "<p>Ada & co</p>",
    }


def test_a_variable_the_recipient_lacks_names_the_field_and_what_it_has() -> None:
    problem = _problem({"subject": "Hi", "body": "Dear {{ city }}"})
    assert problem.field == "body"
    assert str(problem) == "body: 'city' is undefined (this recipient has: email, name)"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ name + 1 }}", "can only concatenate str"),  # TypeError
        ("{{ '{:d}'.format(name) }}", "Unknown format code"),  # ValueError
        ("{{ 1 // 0 }}", "division"),  # ArithmeticError
        ("{{ '%(town)s' % {} }}", "'town'"),  # LookupError
    ],
)
def test_a_template_that_fails_for_this_recipient_is_a_problem_of_its_field(
    source: str, reason: str
) -> None:
    problem = _problem({"subject": "Hi", "html": source})
    assert problem.field == "html"
    assert str(problem).startswith("html: cannot be rendered: ") and reason in str(problem)


def test_what_the_sandbox_refuses_is_a_problem_of_its_field() -> None:
    problem = _problem({"subject": "{{ name.__class__ }}", "body": "b"})
    assert problem.field == "subject" and "not allowed in the template sandbox" in str(problem)


def test_a_template_that_does_not_compile_names_its_field_and_line() -> None:
    problem = _problem({"subject": "Hi", "body": "Dear\n{{ name"})
    assert problem.field == "body" and str(problem).startswith("body: template error on line 2")

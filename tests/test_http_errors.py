"""The one mapping of domain errors to HTTP (web/responses.py): every kind has its status."""

from __future__ import annotations

import inspect

import pytest

from dispatch_engine import errors
from dispatch_engine.web.responses import STATUS_OF_KIND, HttpError, error_body, status_of

KINDS = [
    kind
    for _, kind in inspect.getmembers(errors, inspect.isclass)
    if issubclass(kind, errors.DomainError) and kind is not errors.DomainError
]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_every_domain_error_kind_has_its_own_status(kind: type[errors.DomainError]) -> None:
    # A new kind without an entry would silently answer 400.
    assert kind in dict(STATUS_OF_KIND)


def test_statuses_and_bodies_are_the_apis() -> None:
    invalid = errors.ValidationError("limit", "must be between 1 and 500")
    assert status_of(invalid) == 422
    assert error_body(invalid) == {
        "error": {
            "code": "invalid_field",
            "message": "limit: must be between 1 and 500",
            "field": "limit",
        }
    }
    assert status_of(errors.NotFound("no such campaign")) == 404
    assert status_of(errors.Malformed("the request body must be a JSON object")) == 400
    state = errors.InvalidState("x", code="sender_has_queued_emails", details={"queued": 2})
    assert (status_of(state), error_body(state)["error"]["details"]) == (409, {"queued": 2})
    assert status_of(errors.Conflict("x", code="too_many_tokens")) == 409
    assert status_of(HttpError(401, "unauthenticated", "send an API token")) == 401

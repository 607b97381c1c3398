"""The SMTP transport's reading of server replies."""

from __future__ import annotations

import pytest

from dispatch_engine.plugins import builtin_plugins
from dispatch_engine.transport import PermanentError, SenderRateLimitedError, TransientError

smtp = dict(builtin_plugins())["smtp"]


@pytest.mark.parametrize(
    ("code", "message", "kind"),
    [
        (421, "4.7.0 Too many messages, slow down", SenderRateLimitedError),
        (451, "4.7.1 Rate limit exceeded, try again later", SenderRateLimitedError),
        (451, "4.3.0 Local error in processing", TransientError),
        (452, "4.2.2 Mailbox full", TransientError),
        (550, "5.1.1 No such user", PermanentError),
        (554, "5.7.1 Message rejected as spam", PermanentError),
    ],
)
def test_replies_are_classified(code: int, message: str, kind: type[Exception]) -> None:
    error = smtp.classify(code, message)
    assert type(error) is kind
    assert f"{code} {message}" in str(error), "the server's reply is kept word for word"


def test_ethereal_replies_keep_their_preview_link() -> None:
    reply = "250 Accepted [STATUS=new MSGID=Yh7kN2Q.abc-123@ethereal.email]"
    assert smtp._with_preview("smtp.ethereal.email", reply).endswith(
        "preview: https://ethereal.email/message/Yh7kN2Q.abc-123@ethereal.email"
    )
    assert smtp._with_preview("smtp.example.com", reply) == reply

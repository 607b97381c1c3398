"""The one error the private servers raise."""


class EmbeddedError(Exception):
    """The embedded servers cannot be started or stopped; the message is one user-facing line."""

"""Dispatch Engine: schedules and sends email campaigns."""

from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]
__version__ = "0.1.0"

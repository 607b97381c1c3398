"""Dispatch Engine: schedules and sends email campaigns."""

from importlib import metadata

from .hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]

try:  # one version, pyproject.toml's, as installed
    __version__ = metadata.version("dispatch-engine")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

"""Declaring settings: each one once, as a dataclass field that names its variable.

    @dataclass(frozen=True)
    class NotifySettings:
        webhook_url: str | None = setting(
            "DISPATCH_NOTIFY_WEBHOOK_URL", None, url("http", "https"), "where to post", secret=True
        )

`read_settings(NotifySettings, environ)` parses every field from the environment (a blank
value is the default); a bad value raises `SettingsError` naming the variable. The core's
`Settings` is declared this way, and so is each plugin's own (the module's `SETTINGS`,
checked when the process starts); `declared(cls)` lists them for the docs' checks.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import urlsplit

T = TypeVar("T")
C = TypeVar("C")
Parse = Callable[[str, str], T]  # (variable name, stripped raw value) -> value
_KEY = "dispatch_engine.setting"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Setting(Generic[T]):
    env: str
    default: T
    parse: Parse[T]
    doc: str
    secret: bool = False  # kept out of repr (a password, a URL whose path is a secret)

    def read(self, environ: Mapping[str, str]) -> T:
        raw = environ.get(self.env)
        if raw is None or raw.strip() == "":
            return self.default
        return self.parse(self.env, raw.strip())


def setting(env: str, default: T, parse: Parse[T], doc: str, *, secret: bool = False) -> T:
    """A dataclass field read from the variable `env` (its one declaration)."""
    declaration = Setting(env, default, parse, doc, secret)
    return field(default=default, repr=not secret, metadata={_KEY: declaration})


_DECLARED: dict[type, tuple[tuple[str, Setting[Any]], ...]] = {}


def declared(cls: type) -> tuple[tuple[str, Setting[Any]], ...]:
    """(field name, its Setting) of each declared field of the dataclass `cls`."""
    if cls not in _DECLARED:
        _DECLARED[cls] = tuple(
            (f.name, f.metadata[_KEY]) for f in fields(cls) if _KEY in f.metadata
        )
    return _DECLARED[cls]


def read_settings(cls: type[C], environ: Mapping[str, str]) -> C:
    """An instance of `cls` with each declared field parsed from `environ`."""
    made: C = cast(Any, cls)(**{name: s.read(environ) for name, s in declared(cls)})
    return made


class HasEnviron(Protocol):
    @property
    def environ(self) -> Mapping[str, str]: ...


@functools.lru_cache(maxsize=512)
def _parsed(cls: type, raws: tuple[str | None, ...]) -> object:
    environ = {s.env: raw for (_, s), raw in zip(declared(cls), raws, strict=True) if raw}
    return read_settings(cls, environ)


def settings_of(cls: type[C], settings: HasEnviron) -> C:
    """A plugin's settings, from the environment the core read (parsed once per value)."""
    environ = settings.environ
    raws = tuple(environ.get(s.env) for _, s in declared(cls))
    return cast(C, _parsed(cast(type, cls), raws))


# ---- parsers: (name, raw) -> value, raising SettingsError that names the variable ----


def text(name: str, raw: str) -> str:
    return raw


def names(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list."""
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def path(name: str, raw: str) -> Path:
    return Path(raw)


def whole_number(minimum: int, maximum: int) -> Parse[int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    return parse


def url(*schemes: str) -> Parse[str]:
    def parse(name: str, raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            raise SettingsError(
                f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}, "
                f"got {raw!r}"
            )
        return raw

    return parse


def choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Parse[str]:
    """One of `choices` (case-insensitive); `aliases` maps other spellings onto them."""

    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        value = (aliases or {}).get(value, value)
        if value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"{name} must be true or false, got {raw!r}")
    return value in ("true", "1", "yes")


def ca_file(name: str, raw: str) -> Path:
    """A PEM file of CA certificates that OpenSSL loads (checked now, not at the first use)."""
    file = Path(raw)
    try:
        ssl.create_default_context(cafile=str(file))
    except (OSError, ssl.SSLError) as exc:
        message = f"{name} must be a readable PEM file of CA certificates: {exc}"
        raise SettingsError(message) from None
    return file

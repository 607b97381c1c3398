"""Each test's tier (docs/testing.md, "Tiers"), found from what it uses, so a new test file
needs no marker: `system` if it starts another process, `integration` if it needs the
session's PostgreSQL and Redis, `unit` otherwise. A `unit`/`integration`/`system` marker
on the test or its module (`pytestmark`) wins over the rule."""

from __future__ import annotations

import inspect
import subprocess
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dispatch_engine.embedded import EmbeddedServers
from dispatch_engine.testing import appliance

from . import browser, oidc_provider, processes, smtp_peer

TIERS = ("unit", "integration", "system")
SYSTEM_TIMEOUT_S = 300  # the others keep pyproject's `timeout`

# What starts a process: `dispatch-engine` (processes.py), Chromium, the Node peers and
# Postfix, private servers (alone or in the plugin authors' appliance), any other program.
SYSTEM_MODULES = frozenset(
    m.__name__ for m in (subprocess, processes, browser, smtp_peer, oidc_provider)
)
SYSTEM_OBJECTS: tuple[object, ...] = (EmbeddedServers, appliance)
SYSTEM_CALLS = frozenset({"create_subprocess_exec", "create_subprocess_shell"})
# conftest's fixtures are shared by nearly every test; they count by name, not by their code
# (its autouse fixture reaps leftover processes without starting any).
SERVERS_FIXTURE = "servers"
SYSTEM_FIXTURES = frozenset({"browser"})
TESTS_PACKAGE = __name__.split(".")[0]


def assign(item: pytest.Item) -> None:
    """Mark `item` with its tier; a system test gets the long timeout unless it has one."""
    tier = tier_of(item)
    if item.get_closest_marker(tier) is None:
        item.add_marker(tier)
    if tier == "system" and item.get_closest_marker("timeout") is None:
        item.add_marker(pytest.mark.timeout(SYSTEM_TIMEOUT_S))


def tier_of(item: pytest.Item) -> str:
    """The marker written on the test or its module, else the rule (the module docstring)."""
    explicit = next((m.name for m in item.iter_markers() if m.name in TIERS), None)
    if explicit is not None:
        return explicit
    fixtures = set(getattr(item, "fixturenames", ()))
    module = getattr(getattr(item, "module", None), "__name__", TESTS_PACKAGE)
    ours = (TESTS_PACKAGE, module)  # code of the tests (not pytest's, not the package's)
    if fixtures & SYSTEM_FIXTURES or any(_starts_a_process(f, ours, set()) for f in _code_of(item)):
        return "system"
    return "integration" if SERVERS_FIXTURE in fixtures else "unit"


def _code_of(item: pytest.Item) -> Iterator[Callable[..., Any]]:
    """The test function and the fixtures it uses that are not conftest's."""
    function = getattr(item, "function", None)
    if function is not None:
        yield function
    info = getattr(item, "_fixtureinfo", None)  # pytest's resolved fixtures (no public API)
    for definitions in info.name2fixturedefs.values() if info else ():
        func = definitions[-1].func
        if not func.__module__.endswith("conftest"):
            yield func


def _starts_a_process(
    func: Callable[..., Any], ours: tuple[str, ...], seen: set[types.CodeType]
) -> bool:
    """Whether `func`, or the tests' code it names (functions, classes), starts a process."""
    func = inspect.unwrap(getattr(getattr(func, "hypothesis", None), "inner_test", func))
    code = getattr(func, "__code__", None)
    if code is None or code in seen or not (func.__module__ or "").startswith(ours):
        return False
    seen.add(code)
    namespace = getattr(func, "__globals__", {})
    for name in _names(code):
        if name in SYSTEM_CALLS:
            return True
        value = namespace.get(name)
        if value is None:
            continue
        if isinstance(value, types.ModuleType):
            if value.__name__ in SYSTEM_MODULES:
                return True
            continue
        if any(value is obj for obj in SYSTEM_OBJECTS):
            return True
        if getattr(value, "__module__", None) in SYSTEM_MODULES:
            return True
        if isinstance(value, type) and value.__module__.startswith(ours):
            methods = [m for m in vars(value).values() if inspect.isfunction(m)]
            if any(_starts_a_process(m, ours, seen) for m in methods):
                return True
        elif inspect.isfunction(value) and _starts_a_process(value, ours, seen):
            return True
    return False


def _names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names `code` and the functions nested in it refer to."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)

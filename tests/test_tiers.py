"""The tier rule (tests/support/tiers.py) on a test file written the way a new one would be."""

from __future__ import annotations

import pytest

from .support.tiers import SYSTEM_TIMEOUT_S, TIERS

PROBE = """
import asyncio
import subprocess
import sys

import pytest

from tests.support.helpers import wait_for
from tests.support.processes import run_cli
from tests.support.smtp_sink import SmtpSink


def test_pure():
    assert wait_for


def test_in_process_smtp():
    assert SmtpSink


def test_database(store):
    pass


def _start(args):
    return subprocess.run(args, check=False)


def test_a_helper_starts_a_process():
    _start(["true"])


async def test_asyncio_subprocess():
    await asyncio.create_subprocess_exec(sys.executable, "-c", "1")


def test_the_cli(env):
    run_cli(["--version"], env)


@pytest.fixture
def peer():
    return run_cli(["--version"], {})


def test_a_fixture_of_the_file_starts_a_process(peer):
    pass


def test_the_browser(browser):
    pass


@pytest.mark.integration
def test_marked():
    pass


@pytest.mark.timeout(12)
def test_own_timeout(env):
    run_cli(["--version"], env)
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
"""

EXPECTED = {
    "test_pure": "unit",
    "test_in_process_smtp": "unit",
    "test_database": "integration",
    "test_a_helper_starts_a_process": "system",
    "test_asyncio_subprocess": "system",
    "test_the_cli": "system",
    "test_a_fixture_of_the_file_starts_a_process": "system",
    "test_the_browser": "system",
    "test_marked": "integration",
    "test_own_timeout": "system",
}


def test_each_test_gets_the_tier_of_what_it_uses(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest("from tests.conftest import *  # noqa: F403")
    pytester.makepyfile(test_probe=PROBE)
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    tiers = {item.name: [m.name for m in item.iter_markers() if m.name in TIERS] for item in items}
    assert tiers == {name: [tier] for name, tier in EXPECTED.items()}
    timeouts = {item.name: item.get_closest_marker("timeout") for item in items}
    for name, tier in EXPECTED.items():
        marker = timeouts[name]
        if name == "test_own_timeout":
            assert marker is not None and marker.args == (12,)
        elif tier == "system":
            assert marker is not None and marker.args == (SYSTEM_TIMEOUT_S,), name
        else:
            assert marker is None, name  # the ini's default applies

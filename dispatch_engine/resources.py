"""Find the project's bundled folders (migrations, templates, plugins).

A checkout keeps them at the top level; a wheel carries them inside the package under
`_bundled/`. One function answers for both, so both behave the same.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"dispatch_engine cannot find its {name!r} folder; reinstall it")

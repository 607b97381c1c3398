"""Private PostgreSQL and Redis-compatible servers under a data folder.

Used by `dispatch-engine up` when DATABASE_URL/REDIS_URL are unset, and by the test suite.
Layout: postgres/ (PGDATA), redis/ (append-only file), servers.json (URLs, ports, pids),
credentials.json (the generated passwords), lock (flock held by the owning process),
postgres.log and redis.log. Both servers listen on loopback only and require a password:
PostgreSQL scram-sha-256 for every connection, Redis `requirepass`. The URLs carry the
passwords, so credentials.json and servers.json are readable by their owner only (0600).

Modules: `servers` (the owner, EmbeddedServers), `binaries` (which programs run),
`postgres` and `redis` (each server's setup and start), `processes` (spawn, wait, stop),
`state` (the folder's files and lock). The package needs only the standard library to
import (asyncpg when it creates the database).
"""

from .errors import EmbeddedError
from .servers import EmbeddedServers
from .state import EmbeddedURLs, running_urls

__all__ = ["EmbeddedError", "EmbeddedServers", "EmbeddedURLs", "running_urls"]

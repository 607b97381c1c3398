"""The private Redis-compatible server: an append-only file, `requirepass`, loopback only."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from .processes import spawn
from .state import write_private


def redis_ready(port: int, password: str) -> bool:
    # AUTH is answered while the AOF is replayed; PING says "-LOADING" until it is done.
    command = f"AUTH {password}\r\nPING\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(command)
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(256)
                if not chunk:
                    return False
                answer += chunk
            return answer.split(b"\r\n")[1] == b"+PONG"
    except OSError:
        return False


def start_redis(data_dir: Path, binary: Path, port: int, password: str) -> subprocess.Popen[bytes]:
    """Write redis/redis.conf (0600: it holds the password) and start the server on it."""
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(mode=0o700, exist_ok=True)
    quoted = str(redis_dir).replace("\\", "\\\\").replace('"', '\\"')
    # logfile "" = stdout, which spawn() sends to redis.log.
    write_private(
        redis_dir / "redis.conf",
        f'bind 127.0.0.1\nport {port}\nprotected-mode yes\ndaemonize no\nlogfile ""\n'
        f'dir "{quoted}"\nappendonly yes\nappendfsync everysec\nsave ""\n'
        f"requirepass {password}\n",
    )
    return spawn([str(binary), str(redis_dir / "redis.conf")], data_dir / "redis.log")

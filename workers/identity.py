"""Who a worker process is, and whether the holder of a lease is a process that died."""

from __future__ import annotations

import os
import socket
import uuid

_BOOT = uuid.uuid4().hex[:6]


def worker_identity() -> str:
    """host:pid:boot, unique per worker process (the boot nonce survives pid reuse in containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_BOOT}"


def holder_is_dead(holder: str | None) -> bool:
    """True when ``holder`` was a worker process on this host that no longer runs."""
    if not holder:
        return True
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False  # another host: only its lease can tell
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if holder == worker_identity():
        return False
    if pid == os.getpid():
        return True  # an earlier process with our pid (container restart)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

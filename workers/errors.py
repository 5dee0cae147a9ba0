"""How a job stops early, and the one line its failure is reported with."""

from __future__ import annotations

import errno

from seal_engine.errors import SealError

MAX_ERROR_CHARS = 2000


class JobCancelled(Exception):
    """The job was cancelled while this worker ran it."""


class LeaseLost(Exception):
    """Another worker took the job over (this one's lease ran out)."""


class JobError(SealError):
    """A failure whose message is meant for the user as is."""


# error.code of a job whose worker stopped every time it ran it, and of any unexpected failure.
WORKER_LOST = "worker_lost"
INTERNAL = "internal_error"


def error_code(exc: BaseException) -> str:
    """The kind of failure, for a job's ``error.code``."""
    from pydantic import ValidationError

    if isinstance(exc, SealError):
        return exc.code
    if isinstance(exc, ValidationError):
        return "invalid_value"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out_of_memory"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    return INTERNAL


def readable(exc: BaseException) -> str:
    """One line a user can act on."""
    from pydantic import ValidationError

    from seal_engine.config import describe_invalid

    if isinstance(exc, ValidationError):
        msg = describe_invalid(exc)
    elif isinstance(exc, SealError):
        msg = str(exc)
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        msg = f"out of memory: {exc}"
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = f"no space left to save the adapter ({exc.filename or 'storage'}): free disk space and retry the job"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    msg = " ".join(msg.split())
    return msg[:MAX_ERROR_CHARS] or type(exc).__name__

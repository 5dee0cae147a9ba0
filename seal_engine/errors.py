"""One base for the errors whose message is meant for the user as is.

Callers map them without listing classes: the API answers an :class:`InputError` with
422 and its message, a worker writes any :class:`SealError`'s message as the job's
failure text, and the CLI prints it as one ``error:`` line (exit code 2). Anything
else is a bug and is reported with its type.
"""

from __future__ import annotations


class SealError(Exception):
    """A failure the user can act on; ``str(error)`` says what to do, ``code`` what kind it is
    (a failed job's ``error.code``)."""

    code: str = "job_failed"

    def details(self) -> dict[str, object] | None:
        """What was measured on the way to the failure (kept in a failed job's metrics)."""
        return None


class InputError(SealError, ValueError):
    """Bad input: a document, task, recipe, grid, strategy, adapter file or name."""

    code = "invalid_value"


class UnavailableError(SealError, RuntimeError):
    """Something the work needs cannot be reached or loaded (the model, the judge)."""

    code = "unavailable"

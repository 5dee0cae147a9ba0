"""One base for the errors whose message is meant for the user as is.

Callers map them without listing classes: the API answers an :class:`InputError` with
422 and its message, a worker writes any :class:`SealError`'s message as the job's
failure text, and the CLI prints it as one ``error:`` line (exit code 2). Anything
else is a bug and is reported with its type.
"""

from __future__ import annotations


class SealError(Exception):
    """A failure the user can act on; ``str(error)`` says what to do."""


class InputError(SealError, ValueError):
    """Bad input: a document, task, recipe, grid, strategy, adapter file or name."""


class UnavailableError(SealError, RuntimeError):
    """Something the work needs cannot be reached or loaded (the model, the judge)."""

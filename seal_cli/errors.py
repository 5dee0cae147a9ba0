"""Bad input to ``seal``: one ``error: ...`` line on stderr and exit code 2, never a traceback.

Failures are mapped by base class, not listed: any :class:`seal_engine.errors.SealError`
(bad input, or a model or judge that cannot be loaded) and any ``ValueError`` (the
commands' own checks, pydantic's ``ValidationError`` for settings and flags). A missing
or unreadable input file reaches here as the engine's ``DocumentError``, ``TaskError``
or ``AdapterError``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NoReturn

import typer

from seal_cli.common import console
from seal_engine.errors import SealError

EXIT_BAD_INPUT = 2
USER_ERRORS: tuple[type[BaseException], ...] = (SealError, ValueError)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: the contract for every bad input."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def one_line(e: BaseException) -> str:
    """The error's message on one line; a ValidationError as ``invalid settings: field: msg; ...``."""
    from pydantic import ValidationError

    from seal_engine.config import describe_invalid

    if isinstance(e, ValidationError):
        return describe_invalid(e)
    return " ".join(str(e).split())


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the user's mistakes raised inside the block into :func:`fail`."""
    try:
        yield
    except USER_ERRORS as e:
        fail(one_line(e))

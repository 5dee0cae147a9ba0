"""Stop strings: where generated text ends. One definition for batch generation, serving
decodes and streams: text ends just before the earliest occurrence of any stop string."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


def stop_index(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    return min((i for s in stop if (i := text.find(s)) != -1), default=-1)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = stop_index(text, stop)
    return (text, False) if cut == -1 else (text[:cut], True)


def until_stop(deltas: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """Pass streamed deltas through up to the first stop string, holding back what could start one."""
    emitted = ""
    held = ""
    for delta in deltas:
        held += delta
        text = emitted + held
        cut = stop_index(text, stop)
        if cut != -1:
            if cut > len(emitted):
                yield text[len(emitted) : cut]
            return
        keep = max((len(s) - 1 for s in stop), default=0)
        safe = len(held) - keep if keep else len(held)
        if safe > 0:
            yield held[:safe]
            emitted += held[:safe]
            held = held[safe:]
    if held:
        yield held

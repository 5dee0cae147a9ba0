"""Turning a raw self-edit into inner-loop training sequences (the SEAL rules)."""

from __future__ import annotations

import re

_QUESTION_START = re.compile(r"(?=^\s*Question\s+\d+\s*:)", re.MULTILINE | re.IGNORECASE)
_HAS_QA = re.compile(r"Question\s+\d+\s*:", re.IGNORECASE)
_HAS_ANSWER = re.compile(r"Answer\s*:", re.IGNORECASE)
_NUMBERED = re.compile(r"^\s*\d+[.)]\s")


def _segments(text: str) -> list[str]:
    return [s.strip() for s in text.split("---") if s.strip()]


def _qa_pairs(text: str) -> list[str]:
    """One chunk per 'Question N: ... Answer: ...' pair, lines of a pair joined."""
    chunks = [c.strip() for c in _QUESTION_START.split(text.strip()) if c.strip()]
    if chunks and not _HAS_QA.match(chunks[0]):
        chunks[0] = "Question 1: " + chunks[0]
    return [" ".join(line.strip() for line in c.splitlines() if line.strip()) for c in chunks]


def _lines(segments: list[str]) -> list[str]:
    lines = [ln.strip() for seg in segments for ln in seg.splitlines() if ln.strip()]
    # A preamble such as "Here are the implications:" before a numbered list is dropped.
    if len(lines) > 1 and not _NUMBERED.match(lines[0]) and _NUMBERED.match(lines[1]):
        lines = lines[1:]
    return lines


def build_training_sequences(
    self_edit: str | None,
    context: str,
    title: str = "",
    *,
    split_lines: bool = True,
) -> list[str]:
    """Training sequences for one self-edit of one passage.

    ``---`` separates examples; with ``split_lines`` every non-empty line is its own
    example, except self-QA output, which is split per question/answer pair. Each
    example is prefixed with the title, the passage itself is always appended, and
    empty and duplicate sequences are dropped (first occurrence kept).
    """
    text = (self_edit or "").strip()
    parts: list[str] = []
    if text:
        if split_lines and _HAS_QA.search(text) and _HAS_ANSWER.search(text):
            parts = [p for seg in _segments(text) for p in _qa_pairs(seg)]
        elif split_lines:
            parts = _lines(_segments(text))
        else:
            parts = _segments(text)
    parts.append(context.strip())
    title = title.strip()
    seen: set[str] = set()
    out: list[str] = []
    for p in parts:
        if not p:
            continue
        seq = f"{title}\n{p}" if title else p
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out

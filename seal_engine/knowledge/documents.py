"""Documents and their questions: the unit the engine adapts to."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from seal_engine.errors import InputError


class DocumentError(InputError):
    """Bad document input (missing, empty, malformed)."""


@dataclass(frozen=True)
class Question:
    question: str
    answer: str


@dataclass(frozen=True)
class Document:
    text: str
    title: str = ""
    questions: tuple[Question, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.text or not self.text.strip():
            raise DocumentError("document text is empty")


def _question(obj: object, where: str) -> Question:
    if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not isinstance(obj.get("answer"), str):
        raise DocumentError(f"{where}: each question needs string 'question' and 'answer'")
    if not obj["question"].strip() or not obj["answer"].strip():
        raise DocumentError(f"{where}: empty question or answer")
    return Question(obj["question"].strip(), obj["answer"].strip())


def document_from_dict(obj: object, where: str = "document") -> Document:
    """Accepts ``{"title"?, "text" | "context", "questions"?: [{question, answer}]}``."""
    if not isinstance(obj, dict):
        raise DocumentError(f"{where}: expected an object with 'text' (or 'context')")
    text = obj.get("text", obj.get("context"))
    if not isinstance(text, str):
        raise DocumentError(f"{where}: missing string field 'text' (or 'context')")
    title = obj.get("title") or ""
    if not isinstance(title, str):
        raise DocumentError(f"{where}: 'title' must be a string")
    qs = obj.get("questions") or []
    if not isinstance(qs, list):
        raise DocumentError(f"{where}: 'questions' must be a list")
    if not text.strip():
        raise DocumentError(f"{where}: document text is empty")
    return Document(text=text.strip(), title=title.strip(), questions=tuple(_question(q, where) for q in qs))


def load_documents(path: str | Path) -> list[Document]:
    """A ``.txt`` file (one document; a first line ending the title is not assumed) or JSON.

    JSON may be one document object or a list of them (the SQuAD files in
    ``shared/data/squad`` have this shape).
    """
    path = Path(path)
    if not path.is_file():
        raise DocumentError(f"no such file: {path}")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DocumentError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DocumentError(f"malformed JSON in {path}: {e}") from None
        items = data if isinstance(data, list) else [data]
        if not items:
            raise DocumentError(f"{path}: no documents")
        return [document_from_dict(item, f"{path.name}[{i}]") for i, item in enumerate(items)]
    if not raw.strip():
        raise DocumentError(f"{path}: document is empty")
    return [Document(text=raw.strip(), title=path.stem.replace("_", " "))]

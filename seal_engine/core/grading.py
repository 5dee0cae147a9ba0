"""Graders: SQuAD-normalised exact match, token F1, answer-contains-gold, LLM judge."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from seal_engine.config import JudgeSettings
from seal_engine.errors import UnavailableError

OFFLINE_GRADERS = ("exact_match", "f1", "contains")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def contains(pred: str, gold: str) -> float:
    """1 when the normalised gold answer appears, on word boundaries, in the prediction."""
    g = normalize_answer(gold)
    if not g:
        return 0.0
    return float(f" {g} " in f" {normalize_answer(pred)} ")


def grade_offline(pred: str, gold: str) -> dict[str, float]:
    return {"exact_match": exact_match(pred, gold), "f1": token_f1(pred, gold), "contains": contains(pred, gold)}


class JudgeError(UnavailableError):
    """The LLM judge could not give a verdict; never counted as a wrong answer."""

    code = "judge_unavailable"


JUDGE_PROMPT = (
    "You grade a student's answer against a gold answer. Judge only from the gold answer, "
    "not from outside knowledge. The student's answer is correct if it conveys the gold answer "
    "and does not contradict it; extra detail and different wording are fine.\n\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {pred}\n\n"
    "Is the student's answer correct? Reply with only 'yes' or 'no'."
)

_YES = re.compile(r"\byes\b", re.I)
_NO = re.compile(r"\bno\b", re.I)


def parse_verdict(text: str) -> bool:
    yes, no = bool(_YES.search(text)), bool(_NO.search(text))
    if yes == no:
        raise JudgeError(f"judge gave no clear yes/no: {text[:80]!r}")
    return yes


@dataclass
class LLMJudge:
    """Yes/no grading through any OpenAI-compatible chat completions endpoint."""

    settings: JudgeSettings
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not self.settings.enabled:
            raise JudgeError("judge needs a base URL and a model (SEAL_JUDGE__BASE_URL, SEAL_JUDGE__MODEL)")
        from openai import OpenAI

        self._client = OpenAI(
            base_url=self.settings.base_url,
            api_key=self.settings.api_key or "unused",
            timeout=self.settings.timeout_s,
            max_retries=self.max_retries,
        )

    def grade(self, question: str, pred: str, gold: str) -> bool:
        prompt = JUDGE_PROMPT.format(question=question, gold=gold, pred=pred.strip())
        try:
            resp = self._client.chat.completions.create(
                model=self.settings.model or "",
                messages=[{"role": "user", "content": prompt}],
                temperature=0.0,
                max_tokens=4,
            )
        except Exception as e:  # network, auth, bad model: all are judge failures
            raise JudgeError(f"judge request failed: {type(e).__name__}: {e}") from e
        return parse_verdict(resp.choices[0].message.content or "")

    def grade_many(self, questions: Sequence[str], preds: Sequence[str], golds: Sequence[str]) -> list[bool]:
        return [self.grade(q, p, g) for q, p, g in zip(questions, preds, golds)]

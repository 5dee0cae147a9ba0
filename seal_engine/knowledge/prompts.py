"""Self-edit prompt strategies and the question-answering prompt.

Each strategy has an instruction (used as the chat system/user message) and a base
model completion prompt. ``response_prefix`` is text the answer is forced to start
with (it is generated after, and kept as part of the self-edit), which steers a
small model into the format that the parser expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from seal_engine.errors import InputError

if TYPE_CHECKING:  # annotations only: the CLI checks strategy names before torch is imported
    from seal_engine.core.model import ModelBundle


class UnknownStrategyError(InputError):
    pass


@dataclass(frozen=True)
class Strategy:
    name: str
    instruction: str
    base_template: str  # raw completion prompt for base models; {title} {context}
    response_prefix: str = ""
    split_lines: bool = True  # one training sequence per line of the output


_PASSAGE_BLOCK = "Passage:\n{title}\n{context}\n\n"

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy(
            "implications",
            "Read the passage and list the implications that follow from it, directly or "
            "indirectly. Write one implication per line.",
            "Read the passage and list the implications that follow from it, directly or indirectly.\n\n"
            + _PASSAGE_BLOCK
            + "Implications:\n",
            response_prefix="1.",
        ),
        Strategy(
            "implications-long",
            "Read the passage and write a long, thorough list of implications that follow from it, "
            "directly or indirectly. Write one implication per line.",
            "Read the passage and write a long, thorough list of implications that follow from it.\n\n"
            + _PASSAGE_BLOCK
            + "Implications:\n",
            response_prefix="1.",
        ),
        Strategy(
            "rewrite",
            "Rewrite the passage in several different ways, keeping every fact. "
            "Put each rewritten version on its own line.",
            "Rewrite the passage in several different ways, each version on its own line.\n\n"
            + _PASSAGE_BLOCK
            + "Rewritten versions:\n",
        ),
        Strategy(
            "self-qa",
            "Turn the passage into question-answer pairs that cover every fact in it. "
            "Use the format 'Question N: ...' followed by 'Answer: ...'.",
            "Turn the passage into question-answer pairs that cover every fact in it.\n\n"
            + _PASSAGE_BLOCK
            + "Question 1:",
            response_prefix="Question 1:",
        ),
    ]
}
PASSAGE = "passage"  # baseline: no generated data, train on the passage alone
CUSTOM = "custom"
STRATEGY_NAMES = [*STRATEGIES, PASSAGE]


def get_strategy(name: str, template: str | None = None) -> Strategy | None:
    """The strategy called ``name``; None for the passage-only baseline.

    ``custom`` needs ``template`` containing ``{title}`` and ``{context}``.
    """
    if name == PASSAGE:
        return None
    if name == CUSTOM or template is not None:
        if not template:
            raise UnknownStrategyError("the custom strategy needs a template")
        validate_template(template)
        return Strategy(CUSTOM, template, template)
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES + [CUSTOM])}"
        ) from None


def validate_template(template: str) -> None:
    missing = [f for f in ("{title}", "{context}") if f not in template]
    if missing:
        raise UnknownStrategyError(f"template must contain {' and '.join(missing)}")
    try:
        template.format(title="", context="")
    except (KeyError, IndexError, ValueError) as e:
        raise UnknownStrategyError(f"template has a bad placeholder: {e}") from None


def self_edit_prompt(bundle: ModelBundle, strategy: Strategy, title: str, context: str) -> str:
    """The full text fed to the model, ending where the self-edit begins."""
    if not bundle.is_chat:
        return strategy.base_template.format(title=title, context=context)
    if strategy.name == CUSTOM:
        messages = [{"role": "user", "content": strategy.instruction.format(title=title, context=context)}]
    else:
        messages = [
            {"role": "system", "content": strategy.instruction},
            {"role": "user", "content": f"{title}\n{context}"},
        ]
    text = bundle.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + strategy.response_prefix


_ANSWER_INSTRUCTION = "Answer the question directly and concisely, in a few words."


def answer_prompt(bundle: ModelBundle, question: str) -> str:
    if not bundle.is_chat:
        return f"{_ANSWER_INSTRUCTION}\nQuestion: {question}\nAnswer:"
    messages = [
        {"role": "system", "content": _ANSWER_INSTRUCTION},
        {"role": "user", "content": question},
    ]
    return bundle.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

"""Training data in the form users ask in: chat turns whose assistant reply carries the loss.

A chat user asks one plain user turn (no system prompt) and reads the assistant's reply
(see :func:`seal_engine.knowledge.qa.chat_answers`). Sequences trained as raw text teach
the model to continue text; rendered as (user turn, assistant reply) pairs with loss on
the reply only, the same facts are learned where a chat question looks for them, and the
model's behaviour on other prompts is left alone more (less of it is trained).

- A question/answer sequence (``Question N: q Answer: a``, the self-QA strategy) becomes
  the user asking ``q`` and the assistant answering ``a``.
- Any other sequence (a passage, an implication, a rewrite) becomes the user asking about
  the document's title and the assistant stating the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from seal_engine.core.model import ModelBundle

_QA = re.compile(r"^\s*Question\s*\d*\s*:\s*(?P<q>.+?)\s+Answer\s*:\s*(?P<a>.+?)\s*$", re.IGNORECASE | re.DOTALL)


def user_turn(bundle: ModelBundle, content: str) -> str:
    """The prompt of one plain user turn, rendered as the serving path renders it."""
    from seal_engine.serving.completions import chat_prompt

    return chat_prompt(bundle, [{"role": "user", "content": content}])


def topic_request(title: str) -> str:
    return f"What do you know about {title}?" if title.strip() else "What do you know?"


def chat_examples(bundle: ModelBundle, title: str, sequences: Sequence[str]) -> list[tuple[str, str]]:
    """(prompt, reply) pairs for ``sequences`` of one document (title-prefixed as the parser writes them)."""
    title = title.strip()
    out: list[tuple[str, str]] = []
    for seq in sequences:
        text = seq[len(title) + 1:] if title and seq.startswith(title + "\n") else seq
        m = _QA.match(text)
        if m:
            out.append((user_turn(bundle, m["q"].strip()), m["a"].strip()))
        elif text.strip():
            out.append((user_turn(bundle, topic_request(title)), text.strip()))
    return out

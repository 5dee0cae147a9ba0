"""The benchmarks' chat path asks exactly what a chat client sends: the same prompt tokens, greedy."""

from __future__ import annotations

import pytest

from api.backends.openai_format import chat_messages
from api.schemas import ChatCompletionIn

pytestmark = pytest.mark.slow

QUESTIONS = ["Who founded the Zorblax Institute?", "What is the capital of France?"]


def test_chat_answers_use_the_chat_completions_prompt_tokens(bundle, monkeypatch) -> None:
    import seal_engine.serving.completions as completions
    from seal_engine.knowledge.chat_format import user_turn
    from seal_engine.knowledge.qa import chat_answers

    seen = []
    real = completions.complete
    monkeypatch.setattr(completions, "complete", lambda b, reqs: seen.extend(reqs) or real(b, reqs))
    answers = chat_answers(bundle, QUESTIONS, [None, None], max_tokens=8)
    assert len(answers) == 2 and len(seen) == 2
    tok = bundle.tokenizer
    for q, req in zip(QUESTIONS, seen):
        # What LocalBackend.chat renders for {"messages": [{"role": "user", "content": q}]}.
        body = ChatCompletionIn(model=bundle.model_id, messages=[{"role": "user", "content": q}])
        served = completions.chat_prompt_ids(bundle, chat_messages(body))
        assert list(req.prompt) == served
        # ... and the chat-format training prompts are the same turn, token for token.
        assert tok(user_turn(bundle, q), add_special_tokens=False)["input_ids"] == served
        assert req.temperature == 0.0 and req.adapter is None and req.max_tokens == 8
    # Greedy: the serving decoder's own answer to the served prompt, token for token.
    direct = real(bundle, [completions.CompletionRequest(prompt=seen[0].prompt, max_tokens=8, temperature=0.0)])
    assert direct[0][0].text.strip() == answers[0]

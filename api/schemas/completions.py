"""OpenAI-compatible completions and chat completions."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

# Lenient: unknown OpenAI parameters (presence_penalty, logit_bias, user, ...) are accepted and
# ignored; every string (messages, prompts, stop, ...) must be text UTF-8 can encode.
from api.schemas.common import MAX_TEXT, Lenient, check_text


class ContentPart(Lenient):
    type: str
    text: str | None = Field(None, max_length=MAX_TEXT)


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(None)
    name: str | None = Field(None, max_length=200)

    @field_validator("content", mode="before")
    @classmethod
    def _content_text(cls, v: Any) -> Any:
        # Before the union is tried, so that the error names the content, not one of its shapes.
        return check_text(v, nul=False)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(Lenient):
    include_usage: bool = False


Stop = str | list[str] | None


class _SamplingParams(Lenient):
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Within what a JSON number holds exactly (a double), so that every seed the schema allows is taken.
    seed: int | None = Field(None, ge=-(2**53 - 1), le=2**53 - 1)
    # seal's own (the openai client's extra_body): an adapter with a relevance threshold answers only
    # requests about its documents, the base model the rest; false: the adapter answers this one.
    relevance: bool = Field(True, description="false: the named adapter answers this request even when its "
                            "relevance check would give it to the base model (local backend)")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Stop) -> Stop:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 200 for s in items):
            raise ValueError("stop sequences are 1-200 characters")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionIn(_SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionIn(_SamplingParams):
    prompt: str | list[str] = Field(description="a prompt or a list of prompts (token arrays are not supported)")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= 64:
            raise ValueError("between 1 and 64 prompts")
        if any(not p for p in ([v] if isinstance(v, str) else v)):
            raise ValueError("prompts must not be empty")
        return v

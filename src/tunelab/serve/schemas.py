"""Request and response bodies: OpenAI's shapes (chat, completions, models) and the classifications extension.

Unknown fields are refused (400), as OpenAI's API does, so a misspelled parameter never goes unnoticed.
Parameters tunelab accepts but does not implement must keep their neutral value (see `neutral`).
Extensions (also accepted by vLLM, or tunelab's own) are marked so in their descriptions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class _Generation(Strict):
    model: str = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool = Field(False, description="Extension (vLLM): keep generating past end-of-turn up to max_tokens.")
    return_token_ids: bool = Field(False, description="Extension: add `prompt_token_ids` (the prompt the model saw) to the response.")

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def neutral(self) -> str | None:
        """The first parameter set to a value tunelab does not implement, or None."""
        if self.temperature not in (None, 0.0):
            return "temperature"
        if self.top_p not in (None, 1.0):
            return "top_p"
        if self.n != 1:
            return "n"
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0.0):
                return name
        return None


class ChatRequest(_Generation):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    return_label_probabilities: bool = Field(False, description="Extension: for label-set runs, each label's probability.")


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    raw: bool = Field(False, description="Extension: continue the prompt text as is, without the run's template.")
    return_label_probabilities: bool = False


class ClassificationRequest(Strict):
    model: str = Field(..., min_length=1)
    input: str | list[str | dict[str, str]] = Field(..., description="One raw input, or a list; a dict gives several input columns.")
    user: str | None = None

    def inputs(self) -> list[str | dict[str, str]]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# ---------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    label_probabilities: dict[str, float] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    label_probabilities: dict[str, float] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    prompt_token_ids: list[list[int]] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunelab"
    parent: str | None = None
    root: str
    task: str
    serving: str
    labels: list[str] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Classification(BaseModel):
    index: int
    label: str
    scores: dict[str, float]


class ClassificationList(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


class Health(BaseModel):
    status: Literal["loading", "ok"]
    models: list[str]

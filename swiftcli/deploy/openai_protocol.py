"""OpenAI's request shapes (pydantic; responses: openai_responses.py). A request turns itself into our RequestConfig
in one place.

Nothing a client sends is silently ignored: a request field is implemented, or refused with a 400 that names it
(an unknown field: "Unrecognized request argument supplied", as OpenAI answers; a known one we do not implement,
at anything but its neutral value: "... is not supported"). Names and validation follow vLLM's protocol.py.
"""
from __future__ import annotations

import json
import typing
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from ..errors import ArgumentError
from ..protocol import content_text, valid_text
from ..request_config import RequestConfig, StructuredOutputs, openai_fields
from ..tools import check_tools, forced_schema


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class RequestModel(BaseModel):
    """A request body: an unknown field is a 400 naming it (app.py words it as OpenAI does)."""

    model_config = ConfigDict(extra="forbid")


TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


# ---- requests ------------------------------------------------------------------------------------------------
class StreamOptions(RequestModel):
    include_usage: bool = False
    """Send one more chunk before [DONE] with the usage of the whole request."""
    continuous_usage_stats: bool = False
    """vLLM's: every chunk carries the usage so far."""


def _settings() -> dict[str, Any]:
    """RequestConfig's settings that OpenAI's bodies carry under the same name and type, as pydantic fields."""
    hints = typing.get_type_hints(RequestConfig)
    return {f.name: (hints[f.name], f.default) for f in openai_fields()}


Settings = create_model("Settings", __base__=RequestModel, **_settings())


class SamplingRequest(Settings):
    """Fields shared by chat and completions: RequestConfig's settings (max_tokens, temperature, top_p, ..., see
    request_config.py) plus these. None means the server's default (the model's generation_config)."""

    model: str
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    """The end user's id (OpenAI uses it against abuse); it changes no output."""
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    """OpenAI's {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema"}}: enforced."""
    # vLLM's extensions
    stop_token_ids: list[TokenId] | None = None
    use_beam_search: bool = False
    """Refused (400) when true: neither engine searches beams here."""
    structured_outputs: dict[str, Any] | None = None
    """vLLM's {"json" | "json_object" | "regex" | "choice" | "grammar": ...}; also its older guided_* fields."""
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    def structured(self) -> StructuredOutputs | None:
        """What the reply must match, from whichever one field asks for it (400 for two, or a bad one)."""
        guided = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
        asked = {"response_format": self._response_format(), "structured_outputs": self.structured_outputs,
                 **{name: {key: getattr(self, name)} for name, key in guided.items()
                    if getattr(self, name) is not None}}
        asked = {name: spec for name, spec in asked.items() if spec is not None}
        if len(asked) > 1:
            raise ArgumentError(f"only one of {', '.join(asked)} may constrain the reply", param=list(asked)[1])
        if not asked:
            return None
        (name, spec), = asked.items()
        unknown = set(spec) - {"json", "json_object", "regex", "choice", "grammar"}
        if unknown:
            raise ArgumentError(f"{name}: unsupported key(s) {', '.join(sorted(unknown))}", param=name)
        if isinstance(spec.get("json"), str):
            try:
                spec = {**spec, "json": json.loads(spec["json"])}
            except ValueError as e:
                raise ArgumentError(f"{name}: the JSON schema is not valid JSON: {e}", param=name) from None
        if spec.get("choice") is not None:
            spec = {**spec, "choice": tuple(spec["choice"])}
        try:
            return StructuredOutputs(**spec)
        except ArgumentError as e:
            raise ArgumentError(str(e), param=name) from None

    def _response_format(self) -> dict[str, Any] | None:
        kind = (self.response_format or {}).get("type")
        if kind in (None, "text"):
            return None
        if kind == "json_object":
            return {"json_object": True}
        schema = (self.response_format.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
        if not isinstance(schema, dict):
            raise ArgumentError("response_format must be {'type': 'text'}, {'type': 'json_object'} or "
                                "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}",
                                param="response_format")
        return {"json": schema}

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        """vLLM's rule: with include_usage, every chunk carries the usage so far."""
        return self.include_usage and self.stream_options.continuous_usage_stats

    def to_request_config(self) -> RequestConfig:
        """Raises ArgumentError (-> 400, naming the field) for values we cannot honour."""
        return self._request_config()

    def check_text(self) -> None:
        """Every string must be valid Unicode: JSON's `"\\ud800"` is a lone surrogate, which neither a tokenizer nor
        our reply's JSON can encode. A 400 naming the field, before anything uses the request."""

        def walk(value: Any, path: str, name: str) -> None:
            if isinstance(value, str):
                valid_text(value, path, name)
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(item, f"{path}.{valid_text(str(key), path, name)}", name)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    walk(item, f"{path}[{i}]", name)

        for name, value in self.model_dump(exclude_defaults=True).items():
            walk(value, name, name)

    def check(self) -> None:
        """Combinations vLLM and OpenAI refuse, and what we do not implement."""
        if self.stream_options is not None and not self.stream:
            raise ArgumentError("stream_options can only be set when stream is true", param="stream_options")
        if self.use_beam_search:
            raise ArgumentError("use_beam_search is not supported by swift deploy (sample with n instead)",
                                param="use_beam_search")
        if self.prompt_logprobs is not None and self.stream:
            raise ArgumentError("prompt_logprobs are not available when stream is true", param="prompt_logprobs")

    def _request_config(self, **overrides: Any) -> RequestConfig:
        self.check()
        try:
            logit_bias = {int(k): v for k, v in (self.logit_bias or {}).items()}
        except ValueError:
            raise ArgumentError(f"logit_bias keys must be token ids, got {list(self.logit_bias)}",
                                param="logit_bias") from None
        values = {f.name: getattr(self, f.name) for f in openai_fields()}
        values.update(stop=[] if self.stop is None else self.stop, stop_token_ids=self.stop_token_ids or [],
                      logit_bias=logit_bias, structured_outputs=self.structured())
        return RequestConfig(**{**values, **overrides})


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    """Other keys are allowed only when empty: SDKs send a reply's message back with `refusal`, `annotations`...
    set to null, but a set one would be dropped unread."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    """OpenAI's participant name: passed to the model's own chat template (as vLLM does), which may write it."""
    tool_calls: list[dict[str, Any]] | None = None
    """An assistant message's calls (sent back with the tools' results)."""
    tool_call_id: str | None = None
    """A tool message: the call it answers."""

    @model_validator(mode="after")
    def _no_unread_keys(self) -> ChatMessage:
        unread = [key for key, value in (self.model_extra or {}).items() if value not in (None, "", [], {})]
        if unread:
            raise ValueError(f"{', '.join(unread)} not supported in a message")
        return self


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    """What current OpenAI SDKs send instead of max_tokens; it wins when both are given."""
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    """Functions the model may call, rendered by its chat template (tools.py)."""
    tool_choice: str | dict[str, Any] | None = None
    """none, auto (the default with tools), required, or {"type": "function", "function": {"name": ...}}."""
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    """vLLM's: variables of the model's own chat template, e.g. {"enable_thinking": false}."""
    # vLLM's chat-template fields: a prefill ends with an assistant message and continues it
    add_generation_prompt: bool = True
    """Open the assistant's turn after the messages (after a final assistant message: a new turn)."""
    continue_final_message: bool = False
    """Leave the final message open and continue it; implies no generation prompt."""
    echo: bool = False
    """Put the final message's content in front of the reply when the assistant wrote it (a continued prefill)."""

    def check(self) -> None:
        super().check()
        check_tools(self.tools, self.tool_choice)
        if self.top_logprobs and not self.logprobs:
            raise ArgumentError("when using `top_logprobs`, `logprobs` must be set to true", param="top_logprobs")
        if self.continue_final_message and self.add_generation_prompt and \
                "add_generation_prompt" in self.model_fields_set:
            raise ArgumentError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                                param="continue_final_message")

    @property
    def echo_prefix(self) -> str:
        """What `echo` puts in front of each reply: the final message's content if it is the assistant's."""
        last = self.messages[-1]
        return content_text(self.message_dicts()[-1]["content"]) if self.echo and last.role == "assistant" else ""

    @property
    def calls_tools(self) -> bool:
        """Whether the tools are offered to the model (tool_choice none hides them)."""
        return bool(self.tools) and self.tool_choice != "none"

    def to_request_config(self) -> RequestConfig:
        max_tokens = self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens
        config = self._request_config(max_tokens=max_tokens, logprobs=bool(self.logprobs),
                                      top_logprobs=self.top_logprobs)
        schema = forced_schema(self.tools, self.tool_choice, self.parallel_tool_calls is not False) \
            if self.calls_tools else None
        if schema is None:
            return config
        if config.structured_outputs is not None:
            raise ArgumentError("tool_choice required or a named function already constrains the reply: drop "
                                "response_format / structured_outputs", param="tool_choice")
        return config.replace(structured_outputs=StructuredOutputs(json=schema))

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(include={"role", "content", "name", "tool_calls", "tool_call_id"}, exclude_none=True)
                for m in self.messages]


class CompletionRequest(SamplingRequest):
    prompt: (str | Annotated[list[str], Field(min_length=1)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1)])
    """Text or token ids, one prompt or a list of them (OpenAI's and vLLM's four forms)."""
    echo: bool = False
    """Put the prompt in front of the generated text (with `logprobs`: the prompt tokens' logprobs too)."""
    logprobs: int | None = None
    """Legacy completions: how many top logprobs per token (0: only the sampled token's)."""
    best_of: int | None = None
    suffix: str | None = None

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text or token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return self.prompt

    def check(self) -> None:
        super().check()
        if self.best_of not in (None, 1, self.n):
            raise ArgumentError("best_of is not supported by swift deploy (only best_of = n)", param="best_of")
        if self.suffix:
            raise ArgumentError("suffix (fill-in-the-middle) is not supported by swift deploy", param="suffix")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ArgumentError(f"logprobs must be in [0, 20], got {self.logprobs}", param="logprobs")

    @property
    def echo_logprobs(self) -> bool:
        """echo with logprobs: the prompt's tokens are scored too (what lm-eval's loglikelihood reads)."""
        return self.echo and self.logprobs is not None

    def to_request_config(self) -> RequestConfig:
        prompt_logprobs = self.prompt_logprobs
        if prompt_logprobs is None and self.echo_logprobs:
            prompt_logprobs = self.logprobs
        return self._request_config(logprobs=self.logprobs is not None, top_logprobs=self.logprobs,
                                    prompt_logprobs=prompt_logprobs)

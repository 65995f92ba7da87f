"""The one list of a request's generation settings, and everything derived from it.

`RequestConfig` declares each setting once: its type, its "not given" default, its docstring, and in the field's
metadata where else it appears. The command line's generation flags (arguments/generation.py), the OpenAI request
bodies (deploy/openai_protocol.py), the client's `XRequestConfig`, the web UI's sliders, the model's
generation_config.json reader and both engines' mappings (vLLM's `SamplingParams`, the pt sampler's resolved row)
read these tables instead of naming the fields again. A new sampling parameter is one field here plus the pt
sampler's code for it (the README's developer section lists the files).

Metadata keys of a field:
- `neutral`: the value that turns the setting off; None ("the model decides") resolves to it in the engines.
- `flag`: (name, default) of its `swift infer/deploy/app-ui` flag, when it has one.
- `openai`: False when the OpenAI body spells it differently (stop as a string, logit_bias keys as strings,
  logprobs per endpoint); those few are mapped by hand in openai_protocol.py.
- `vllm`: False when vllm.SamplingParams has no field of that name and meaning (mapped by hand in vllm_engine.py).
- `generation_config`: read from the model's generation_config.json ("sampling": only when it sets do_sample).
- `ui`: (low, high, step, info) of its web UI slider.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ArgumentError


@dataclass(frozen=True)
class StructuredOutputs:
    """What the reply must match, enforced while decoding (vLLM's StructuredOutputsParams; exactly one is set):
    a JSON schema, any JSON object, a regular expression, one of some strings, or an EBNF grammar."""

    json: dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "json_object", "regex", "choice", "grammar")
                 if getattr(self, name) not in (None, False)]
        empty = [name for name in given if getattr(self, name) in ("", (), [], {})]
        if empty:
            raise ArgumentError(f"structured output: {empty[0]} is empty", param="structured_outputs")
        if len(given) != 1:
            raise ArgumentError(f"structured output takes exactly one of json, json_object, regex, choice, grammar; "
                                f"got {', '.join(given) or 'none'}", param="structured_outputs")
        if self.choice is not None and not all(isinstance(c, str) and c for c in self.choice):
            raise ArgumentError("structured output choice must be non-empty strings", param="structured_outputs")
        self.grammar_check()

    def grammar_check(self) -> None:
        """Compile it once with xgrammar (the library both engines decode with): a bad schema or regex is the
        request's error, named here, not the engine's."""
        try:
            import xgrammar as xgr
        except ModuleNotFoundError:
            raise ArgumentError("structured output needs the xgrammar package: pip install xgrammar",
                                param="structured_outputs") from None
        try:
            if self.json is not None:
                xgr.Grammar.from_json_schema(json_text(self.json))
            elif self.regex is not None:
                xgr.Grammar.from_regex(self.regex)
            elif self.grammar is not None:
                xgr.Grammar.from_ebnf(self.grammar)
        except Exception as e:  # xgrammar raises RuntimeError with the parser's message
            kind = "JSON schema" if self.json is not None else "regex" if self.regex is not None else "grammar"
            why = re.sub(r"^\[[\d:]+\] \S+: ", "", str(e).strip().splitlines()[-1])  # xgrammar's time and source
            raise ArgumentError(f"invalid {kind}: {why}", param="structured_outputs") from None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, as vLLM's StructuredOutputsParams (and its request body) take them. `json_object`
        is the schema of any object: OpenAI promises an object, where a grammar of any JSON would allow `[false]`."""
        values = {"json": ANY_OBJECT if self.json_object else self.json, "regex": self.regex,
                  "choice": list(self.choice) if self.choice else None, "grammar": self.grammar}
        return {k: v for k, v in values.items() if v is not None}


ANY_OBJECT = {"type": "object"}


def json_text(schema: Any) -> str:
    import json

    return schema if isinstance(schema, str) else json.dumps(schema)


def setting(default: Any = None, *, factory: Any = None, neutral: Any = None, flag: tuple[str, Any] | None = None,
            openai: bool = True, vllm: bool = True, generation_config: str | None = None,
            ui: tuple[float, float, float, str] | None = None) -> Any:
    """A RequestConfig field with its metadata (the keys are described in the module docstring)."""
    metadata = dict(neutral=neutral, flag=flag, openai=openai, vllm=vllm, generation_config=generation_config, ui=ui)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RequestConfig:
    """Generation settings of one request. `None` means the model's generation_config decides."""

    max_tokens: int | None = setting(flag=("max_new_tokens", 2048))
    """Most tokens to generate per reply."""
    temperature: float | None = setting(neutral=1.0, flag=("temperature", None), generation_config="sampling",
                                        ui=(0, 2, 0.05, "0: greedy"))
    """Sampling temperature; 0 = greedy. Default: the model's generation_config."""
    top_k: int | None = setting(neutral=0, flag=("top_k", None), generation_config="sampling",
                                ui=(0, 200, 1, "0: off"))
    """Sample from the k most likely tokens (-1 or 0: all)."""
    top_p: float | None = setting(neutral=1.0, flag=("top_p", None), generation_config="sampling",
                                  ui=(0.01, 1, 0.01, ""))
    """Nucleus sampling mass."""
    min_p: float | None = setting(neutral=0.0, flag=("min_p", None), generation_config="sampling",
                                  ui=(0, 1, 0.01, "0: off"))
    """Drop tokens less likely than min_p times the likeliest one (vLLM's and transformers' min_p)."""
    repetition_penalty: float | None = setting(neutral=1.0, flag=("repetition_penalty", None),
                                               generation_config="always", ui=(0.5, 2, 0.01, "1: off"))
    """>1 discourages repeating tokens."""
    presence_penalty: float = setting(0.0)
    frequency_penalty: float = setting(0.0)
    seed: int | None = setting()
    stop: list[str] = setting(factory=list, flag=("stop_words", None), openai=False, vllm=False)
    """Extra strings that end a reply."""
    n: int = setting(1)
    logprobs: bool = setting(False, openai=False, vllm=False)
    top_logprobs: int | None = setting(openai=False, vllm=False)
    ignore_eos: bool = setting(False)
    """Ignore the model's end-of-turn ids and stop words (not the request's own `stop`/`stop_token_ids`)."""
    stop_token_ids: list[int] = setting(factory=list, openai=False, vllm=False)
    """Token ids that end a reply, on top of the model's own (vLLM's field)."""
    min_tokens: int = setting(0)
    """No stop (id or string) before this many tokens (vLLM's field)."""
    logit_bias: dict[int, float] = setting(factory=dict, openai=False, vllm=False)
    """Added to these token ids' logits before sampling (OpenAI's field: -100 bans, 100 forces)."""
    prompt_logprobs: int | None = setting()
    """Logprob of every prompt token (the first has none) with this many top alternatives; None: off."""
    structured_outputs: StructuredOutputs | None = setting(openai=False, vllm=False)
    """The reply must match this (a JSON schema, any JSON, a regex, a choice, a grammar): constrained decoding."""
    skip_special_tokens: bool = setting(True)
    """Leave special tokens out of the text (vLLM's field; tool-call parsers that read them turn it off)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1"),
            (self.temperature is None or 0 <= self.temperature <= 2, "temperature", "must be in [0, 2]"),
            (self.top_k is None or self.top_k >= -1, "top_k", "must be -1 or 0 (off) or >= 1"),
            (self.seed is None or 0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.min_p is None or 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (self.repetition_penalty is None or self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (1 <= self.n <= 16, "n", "must be in [1, 16]"),
            (self.top_logprobs is None or 0 <= self.top_logprobs <= 20, "top_logprobs", "must be in [0, 20]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids), "stop_token_ids",
             "must be token ids (integers >= 0)"),
            (self.min_tokens >= 0, "min_tokens", "must be >= 0"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
             f"must be <= max_tokens ({self.max_tokens})"),
            (all(isinstance(i, int) and i >= 0 for i in self.logit_bias), "logit_bias", "keys must be token ids"),
            (all(-100 <= v <= 100 for v in self.logit_bias.values()), "logit_bias", "values must be in [-100, 100]"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs", "must be in [0, 20]"),
            (self.n == 1 or self.temperature != 0, "n", "must be 1 when using greedy sampling (temperature 0)"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ArgumentError(f"{name} {why}, got {getattr(self, name)!r}", param=name)

    def replace(self, **changes: Any) -> RequestConfig:
        """A copy with the changes that are not None."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return RequestConfig(**values)

    def resolved(self) -> RequestConfig:
        """Every "the model decides" (None) that is still left replaced by its neutral value, and top_k -1 by 0:
        the values an engine samples with."""
        values = {f.name: f.metadata["neutral"] for f in fields(self)
                  if f.metadata["neutral"] is not None and getattr(self, f.name) is None}
        if self.top_k is not None and self.top_k < 0:
            values["top_k"] = 0
        return dataclasses.replace(self, **values)

    def vllm_kwargs(self) -> dict[str, Any]:
        """The resolved settings whose names and meaning vllm.SamplingParams shares."""
        config = self.resolved()
        return {f.name: getattr(config, f.name) for f in fields(config) if f.metadata["vllm"]}

    @classmethod
    def from_generation_config(cls, gen: dict[str, Any], **given: Any) -> RequestConfig:
        """A model's generation_config (a dict of its JSON, or transformers' GenerationConfig's `to_dict()`):
        greedy unless it sets do_sample. `given` (not None) wins over it."""
        sampling = bool(gen.get("do_sample", False))
        values: dict[str, Any] = {"temperature": None if sampling else 0.0}
        for f in fields(cls):
            when = f.metadata["generation_config"]
            if when == "always" or (when == "sampling" and sampling):
                values[f.name] = gen.get(f.name)
        if sampling and values.get("temperature") is None:
            values["temperature"] = 1.0
        return cls(**values).replace(**given)


def flag_fields() -> list[tuple[str, str, Any]]:
    """(flag name, RequestConfig field, flag default) of every setting the command line has."""
    return [(f.metadata["flag"][0], f.name, f.metadata["flag"][1]) for f in fields(RequestConfig) if f.metadata["flag"]]


def openai_fields() -> list[dataclasses.Field]:
    """The settings an OpenAI request body carries under the same name and type."""
    return [f for f in fields(RequestConfig) if f.metadata["openai"]]


def ui_fields() -> list[dataclasses.Field]:
    """The settings the web UI has a slider for, in declaration order."""
    return [f for f in fields(RequestConfig) if f.metadata["ui"]]


def openai_body(config: Any, is_chat: bool) -> dict[str, Any]:
    """The JSON fields of a chat/completions body for the settings of `config` (a RequestConfig or the client's
    XRequestConfig) that differ from RequestConfig's defaults: unset ones stay the server's."""
    defaults = RequestConfig()
    body = {f.name: getattr(config, f.name) for f in fields(RequestConfig)
            if getattr(config, f.name) != getattr(defaults, f.name)}
    if "logit_bias" in body:
        body["logit_bias"] = {str(k): v for k, v in body["logit_bias"].items()}
    if body.get("structured_outputs") is not None:
        body["structured_outputs"] = body["structured_outputs"].as_dict()
    if not is_chat:  # legacy completions: `logprobs` is how many top logprobs per token
        top = body.pop("top_logprobs", None)
        if body.pop("logprobs", False):
            body["logprobs"] = top or 0
    return body

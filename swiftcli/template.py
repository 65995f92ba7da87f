"""Chat templates: messages -> token ids (and training labels), plus the words that end a reply.

A template is a handful of strings in ms-swift's shape (prefix, prompt, chat_sep, suffix, system_prefix).
The whole conversation is rendered to text and tokenized once, exactly as `tokenizer.apply_chat_template`
does, so ids match the official templates; labels come from the character spans of the replies.
"""
from __future__ import annotations

from copy import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import ArgumentError, ContextLengthError, closest
from .protocol import History, Messages, normalize_messages, to_messages

DEFAULT_SYSTEM = "You are a helpful assistant."
LLAMA_DEFAULT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.")
IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | None = None
    """Same length as input_ids; IGNORE_INDEX everywhere but the assistant replies (and their end token)."""


@dataclass
class Template:
    """`{{QUERY}}`, `{{SYSTEM}}`, `{{RESPONSE}}`, `{{BOS}}`, `{{EOS}}` are filled in when rendering."""

    template_type: str
    prefix: str = ""
    prompt: str = "{{QUERY}}"
    chat_sep: str | None = None
    """Between a reply and the next query; None means the template has no multi-turn form."""
    suffix: str = "{{EOS}}"
    """After the last reply (what the model emits to stop)."""
    system_prefix: str | None = None
    """Replaces `prefix` when there is a system prompt; None means the template takes no system prompt."""
    default_system: str | None = None
    response: str = "{{RESPONSE}}"
    is_generation: bool = False
    """Base models: no chat form, served through completions."""
    tokenizer: Any = field(default=None, repr=False)
    max_length: int | None = None
    truncation_strategy: str = "delete"

    @property
    def support_multi_round(self) -> bool:
        return self.chat_sep is not None

    @property
    def support_system(self) -> bool:
        return self.system_prefix is not None

    # ---- rendering -------------------------------------------------------------------------------------------
    def _fill(self, text: str, **values: str) -> str:
        tok = self.tokenizer
        text = text.replace("{{BOS}}", (tok.bos_token or "") if tok else "")
        text = text.replace("{{EOS}}", (tok.eos_token or "") if tok else "")
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return text

    def render(self, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
        """Text of the conversation, and the (start, end) character spans that carry the loss.

        Messages ending with a user turn render the generation prompt; ending with an assistant turn they render
        the full conversation with the suffix (training).
        """
        messages = normalize_messages(messages)
        system = messages[0]["content"] if messages[0]["role"] == "system" else self.default_system
        turns = messages[1:] if messages[0]["role"] == "system" else messages
        if system and not self.support_system:
            raise ArgumentError(f"template {self.template_type!r} does not take a system prompt")
        if len(turns) > 2 and not self.support_multi_round:
            raise ArgumentError(f"template {self.template_type!r} supports single-round dialogues only")
        text = self._fill(self.system_prefix, SYSTEM=system) if system else self._fill(self.prefix)
        spans: list[tuple[int, int]] = []
        for i in range(0, len(turns), 2):
            text += self._fill(self.prompt, QUERY=turns[i]["content"])
            if i + 1 == len(turns):
                break
            reply = self._fill(self.response, RESPONSE=turns[i + 1]["content"])
            end_text = self._fill(self.suffix if i + 2 == len(turns) else self.chat_sep)
            end_token = self._fill(self.suffix).strip()
            start = len(text)
            text += reply + end_text
            # The reply and the end token right after it are learned; the rest of the separator is not.
            stop = start + len(reply)
            if end_token and end_text.lstrip().startswith(end_token):
                stop += len(end_text) - len(end_text.lstrip()) + len(end_token)
            spans.append((start, stop))
        return text, spans

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode(self, query: str | Messages, history: History | None = None, system: str | None = None) -> Encoded:
        """Token ids for a query with history (the seed's shape) or OpenAI messages; labels when training."""
        messages = query if isinstance(query, list) else to_messages(query, history, system)
        text, spans = self.render(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=bool(spans))
        input_ids = list(enc["input_ids"])
        labels = None
        if spans:
            labels = [tid if any(s <= a < e for s, e in spans) else IGNORE_INDEX
                      for tid, (a, _) in zip(input_ids, enc["offset_mapping"])]
        return self._truncate(Encoded(input_ids, labels))

    def encode_prompt(self, prompt: str) -> Encoded:
        """A raw completion prompt: no template, the tokenizer's own special tokens (bos)."""
        return self._truncate(Encoded(list(self.tokenizer(prompt)["input_ids"])))

    def _truncate(self, enc: Encoded) -> Encoded:
        if not self.max_length or self.max_length <= 0 or len(enc.input_ids) <= self.max_length:
            return enc
        if self.truncation_strategy == "truncation_left":
            n = self.max_length
            return Encoded(enc.input_ids[-n:], enc.labels[-n:] if enc.labels else None)
        raise ContextLengthError(len(enc.input_ids), self.max_length)

    # ---- stopping --------------------------------------------------------------------------------------------
    @property
    def stop_words(self) -> list[str]:
        """Strings that end a reply: the template's end token and the tokenizer's eos."""
        words = [self._fill(self.suffix).strip(), (self.tokenizer.eos_token if self.tokenizer else None)]
        return [w for i, w in enumerate(words) if w and w not in words[:i]]

    @property
    def stop_token_ids(self) -> list[int]:
        ids = []
        for word in self.stop_words:
            tid = self.tokenizer.convert_tokens_to_ids(word)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid not in ids:
                ids.append(tid)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


class AutoTemplate(Template):
    """The tokenizer's own `chat_template` (jinja), for models whose template has logic of its own."""

    def render(self, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
        messages = normalize_messages(messages)
        if self.default_system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}] + messages
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ArgumentError("template 'auto' needs a tokenizer with a chat_template; use --template_type")
        training = messages[-1]["role"] == "assistant"
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=not training)
        spans, pos = [], 0
        if training:  # find each reply in order; the end token is whatever the template put right after it
            for m in messages:
                if m["role"] != "assistant":
                    continue
                start = text.find(m["content"], pos)
                if start < 0:
                    raise ArgumentError("the tokenizer's chat_template rewrites replies; cannot locate labels")
                stop = start + len(m["content"])
                eos = tok.eos_token or ""
                for end_token in (t for t in (self.suffix_token, eos) if t):
                    if text.startswith(end_token, stop):
                        stop += len(end_token)
                        break
                spans.append((start, stop))
                pos = stop
        return text, spans

    @property
    def suffix_token(self) -> str | None:
        tok = self.tokenizer
        for candidate in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            if candidate in tok.get_vocab():
                return candidate
        return None

    @property
    def stop_words(self) -> list[str]:
        words = [self.suffix_token, self.tokenizer.eos_token]
        return [w for i, w in enumerate(words) if w and w not in words[:i]]


_CHATML = dict(prompt="<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n", chat_sep="<|im_end|>\n",
               suffix="<|im_end|>", system_prefix="<|im_start|>system\n{{SYSTEM}}<|im_end|>\n")
_LLAMA3_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"

TEMPLATE_MAPPING: dict[str, Template] = {}


def register_template(template: Template, exist_ok: bool = False) -> None:
    if template.template_type in TEMPLATE_MAPPING and not exist_ok:
        raise ValueError(f"template {template.template_type!r} is already registered")
    TEMPLATE_MAPPING[template.template_type] = template


for _t in [
    Template("default", prompt="### Human:\n{{QUERY}}\n\n### Assistant:\n", chat_sep="\n\n", suffix="{{EOS}}",
             system_prefix="{{SYSTEM}}\n\n", default_system=DEFAULT_SYSTEM),
    Template("default-generation", prompt="{{QUERY}}", suffix="{{EOS}}", is_generation=True),
    Template("chatml", **_CHATML),
    Template("qwen", **_CHATML, default_system=DEFAULT_SYSTEM),
    Template("qwen2_5", **_CHATML,
             default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    Template("yi", **_CHATML),
    Template("smollm2", **_CHATML,
             default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    Template("llama", prefix="{{BOS}}[INST] ", prompt="{{QUERY}} [/INST]", response=" {{RESPONSE}}",
             chat_sep=" {{EOS}}{{BOS}}[INST] ", suffix=" {{EOS}}",
             system_prefix="{{BOS}}[INST] <<SYS>>\n{{SYSTEM}}\n<</SYS>>\n\n", default_system=LLAMA_DEFAULT_SYSTEM),
    Template("llama3", prefix="<|begin_of_text|>",
             prompt=_LLAMA3_HEADER.format("user") + "{{QUERY}}<|eot_id|>" + _LLAMA3_HEADER.format("assistant"),
             chat_sep="<|eot_id|>", suffix="<|eot_id|>",
             system_prefix="<|begin_of_text|>" + _LLAMA3_HEADER.format("system") + "{{SYSTEM}}<|eot_id|>"),
    Template("chatglm3", prefix="[gMASK]sop", prompt="<|user|>\n{{QUERY}}<|assistant|>\n", chat_sep="",
             suffix="<|user|>", system_prefix="[gMASK]sop<|system|>\n{{SYSTEM}}"),
    AutoTemplate("auto", chat_sep="", system_prefix=""),
]:
    register_template(_t)


class TemplateType:
    """String constants, `TemplateType.qwen == 'qwen'`."""


for _name in TEMPLATE_MAPPING:
    setattr(TemplateType, _name.replace("-", "_"), _name)


def get_template(template_type: str, tokenizer: Any, default_system: str | None = None,
                 max_length: int | None = None, truncation_strategy: str = "delete", **kwargs: Any) -> Template:
    """A copy of the registered template bound to `tokenizer` (the seed's signature).

    `default_system=''` removes the template's default system prompt.
    """
    if template_type not in TEMPLATE_MAPPING:
        hint = closest(template_type, TEMPLATE_MAPPING)
        raise ArgumentError(f"Unknown template_type {template_type!r}."
                            + (f" Did you mean: {', '.join(hint)}?" if hint else
                               f" Choose from: {', '.join(TEMPLATE_MAPPING)}."))
    if truncation_strategy not in ("delete", "truncation_left"):
        raise ArgumentError(f"truncation_strategy must be 'delete' or 'truncation_left', got {truncation_strategy!r}")
    template = copy(TEMPLATE_MAPPING[template_type])
    template.tokenizer = tokenizer
    template.max_length = max_length
    template.truncation_strategy = truncation_strategy
    if default_system is not None:
        template.default_system = default_system or None
    return template

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
    auto_add_bos: bool = False
    """Start with the bos token when the tokenizer adds one by itself (ms-swift's `auto_add_bos`)."""
    strip_content: bool = False
    """Strip whitespace around the system, queries and replies, as the official jinja does (`| trim`)."""
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

    def _clean(self, text: str, role: str, after_system: bool = False) -> str:
        """A message's content as the template writes it (`after_system`: the first query, right after a system)."""
        return text.strip() if self.strip_content else text

    def _adds_bos(self) -> bool:
        tok = self.tokenizer
        return (tok is not None and tok.bos_token_id is not None
                and tok.bos_token_id in tok("", add_special_tokens=True)["input_ids"])

    def render(self, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
        """Text of the conversation, and the (start, end) character spans that carry the loss.

        Messages ending with a user turn render the generation prompt; ending with an assistant turn they render
        the full conversation with the suffix (training). A span covers a reply and the end token right after it
        (`<|im_end|>`, or `<|user|>` where the next query starts with it), not the rest of the separator.
        """
        messages = normalize_messages(messages)
        system = messages[0]["content"] if messages[0]["role"] == "system" else self.default_system
        turns = messages[1:] if messages[0]["role"] == "system" else messages
        if system and not self.support_system:
            raise ArgumentError(f"template {self.template_type!r} does not take a system prompt")
        if len(turns) > 2 and not self.support_multi_round:
            raise ArgumentError(f"template {self.template_type!r} supports single-round dialogues only")
        text = self._fill("{{BOS}}") if self.auto_add_bos and self._adds_bos() else ""
        if system:
            text += self._fill(self.system_prefix, SYSTEM=self._clean(system, "system"))
        else:
            text += self._fill(self.prefix)
        replies: list[tuple[int, int]] = []
        for i in range(0, len(turns), 2):
            query = self._clean(turns[i]["content"], "user", after_system=bool(system) and i == 0)
            text += self._fill(self.prompt, QUERY=query)
            if i + 1 == len(turns):
                break
            start = len(text)
            text += self._fill(self.response, RESPONSE=self._clean(turns[i + 1]["content"], "assistant"))
            replies.append((start, len(text)))
            text += self._fill(self.suffix if i + 2 == len(turns) else self.chat_sep)
        end_token = self._fill(self.suffix).strip()
        return text, [(start, self._past_end_token(text, stop, end_token)) for start, stop in replies]

    @staticmethod
    def _past_end_token(text: str, stop: int, end_token: str) -> int:
        """Where the learned part of a reply ends: after `end_token` if it comes next (spaces between are kept)."""
        at = stop
        while at < len(text) and text[at].isspace():
            at += 1
        return at + len(end_token) if end_token and text.startswith(end_token, at) else stop

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


class Llama2Template(Template):
    """Llama-2-chat: its jinja strips `<<SYS>>\n{system}\n<</SYS>>\n\n{first query}` as one string, so the system
    keeps its whitespace and that first query loses only its trailing whitespace; other messages are stripped."""

    def _clean(self, text: str, role: str, after_system: bool = False) -> str:
        if role == "system":
            return text
        return text.rstrip() if after_system else text.strip()


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
            end_tokens = [t for t in (self.suffix_token, tok.eos_token) if t]
            for k, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                start, stop = self._locate_reply(text, messages, k, pos)
                stop = max(self._past_end_token(text, stop, end_token) for end_token in end_tokens)
                spans.append((start, stop))
                pos = stop
        return text, spans

    def _locate_reply(self, text: str, messages: Messages, k: int, pos: int) -> tuple[int, int]:
        """Character span of `messages[k]` (a reply) in `text`, searched after the prompt that precedes it.

        Searching from the rendered prompt `messages[:k]` keeps a short reply ("4") from matching inside an
        earlier query; templates that trim replies (Llama-3's `| trim`) are matched by the stripped text.
        """
        prompt = self.tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        if text.startswith(prompt):
            pos = max(pos, len(prompt))
        content = messages[k]["content"]
        for needle in (content, content.strip()):
            start = text.find(needle, pos)
            if start >= 0:
                return start, start + len(needle)
        raise ArgumentError("the tokenizer's chat_template rewrites replies; cannot locate labels")

    @property
    def suffix_token(self) -> str | None:
        """The end-of-turn token: one of the usual ones that the chat template writes (else that the vocab has)."""
        tok = self.tokenizer
        vocab = tok.get_vocab()
        candidates = [t for t in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>") if t in vocab]
        used = [t for t in candidates if t in str(getattr(tok, "chat_template", None) or "")]
        return (used or candidates or [None])[0]

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
    # ms-swift 2.x's parts; where a model family ships an official jinja template, the ids equal it
    # (tests/test_template.py holds those templates and checks every one).
    Template("default", prompt="### Human:\n{{QUERY}}\n\n### Assistant:\n", chat_sep="\n\n", suffix="{{EOS}}",
             system_prefix="{{SYSTEM}}\n\n", default_system=DEFAULT_SYSTEM, auto_add_bos=True),
    Template("default-generation", prompt="{{QUERY}}", suffix="{{EOS}}", auto_add_bos=True, is_generation=True),
    Template("chatml", **_CHATML, auto_add_bos=True),
    Template("qwen", **_CHATML, default_system=DEFAULT_SYSTEM),
    Template("qwen2_5", **_CHATML,
             default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    # Yi's official jinja writes the system prompt bare, with no `<|im_start|>system` block (ms-swift wraps it).
    Template("yi", **{**_CHATML, "system_prefix": "{{SYSTEM}}"}, auto_add_bos=True),
    Template("smollm2", **_CHATML,
             default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    Llama2Template("llama", prefix="{{BOS}}[INST] ", prompt="{{QUERY}} [/INST]", response=" {{RESPONSE}}",
                   chat_sep=" {{EOS}}{{BOS}}[INST] ", suffix=" {{EOS}}",
                   system_prefix="{{BOS}}[INST] <<SYS>>\n{{SYSTEM}}\n<</SYS>>\n\n",
                   default_system=LLAMA_DEFAULT_SYSTEM),
    Template("llama3", prefix="<|begin_of_text|>",
             prompt=_LLAMA3_HEADER.format("user") + "{{QUERY}}<|eot_id|>" + _LLAMA3_HEADER.format("assistant"),
             chat_sep="<|eot_id|>", suffix="<|eot_id|>",
             system_prefix="<|begin_of_text|>" + _LLAMA3_HEADER.format("system") + "{{SYSTEM}}<|eot_id|>",
             strip_content=True),
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

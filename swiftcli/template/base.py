"""The string-template form: ms-swift's parts rendered to text, then encoded to ids (and labels), and the words that
end a reply. `prompt_kind` and `fold_system` are shared with the tokenizer's own jinja (`auto.py`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError, ContextLengthError
from ..protocol import History, Messages, normalize_messages, to_messages
from ..tools import hermes_messages

IGNORE_INDEX = -100
logger = logging.getLogger("swiftcli")


def prompt_kind(last_role: str, add_generation_prompt: bool | None, continue_final_message: bool) -> str:
    """How a conversation becomes text, by vLLM's chat request fields (ms-swift calls a continued reply a response
    prefix). A prompt is never the finished conversation that training encodes.

    - 'train': `add_generation_prompt` None (not a prompt) and a reply last: the conversation with its end token;
    - 'generate': the generation prompt opens the assistant's turn (after a reply: a new turn);
    - 'continue': `continue_final_message`: the final message stays open, the model goes on with it (the generation
      prompt is implied off);
    - 'no_generation_prompt': `add_generation_prompt` false after a user message: no assistant header.
    """
    if continue_final_message:
        return "continue"
    if add_generation_prompt is None:
        return "train" if last_role == "assistant" else "generate"
    if add_generation_prompt:
        return "generate"
    if last_role == "assistant":
        raise ArgumentError("the conversation ends with an assistant message and add_generation_prompt is false: "
                            "send continue_final_message true to continue that message, or add_generation_prompt "
                            "true for a new assistant turn", param="add_generation_prompt")
    return "no_generation_prompt"


def fold_system(system: str, turns: Messages, template: "Template") -> Messages:
    """`turns` with the system prompt in front of the first user message, for a template without a system role
    (Gemma-3's own rule; ms-swift and vLLM fold the same way). Said once per template."""
    if not template._told_fold:
        template._told_fold = True
        logger.warning("template %r has no system role: the system prompt is put in front of the first user "
                       "message", template.template_type)
    return [{**turns[0], "content": f"{system}\n\n{turns[0]['content']}"}] + turns[1:]


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
    _system_role: bool | None = field(default=None, init=False, repr=False)
    """The tokenizer's chat template takes a system message ('auto': found out on first use)."""
    _told_fold: bool = field(default=False, init=False, repr=False)
    """The warning that the system prompt is folded into the first user message was printed."""
    max_length: int | None = None
    truncation_strategy: str = "delete"
    reasoning_parser: str | None = None
    """How a reply's reasoning is told from its content (reasoning.py); None: the model does not reason."""
    tool_parser: str = "hermes"
    """How a reply's tool calls are read (tools.py)."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Variables every render passes to the tokenizer's own chat template (--chat_template_kwargs)."""

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

    def render(self, messages: Messages, add_generation_prompt: bool | None = None,
               continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """Text of the conversation, and the (start, end) character spans that carry the loss (training only).

        With the defaults, messages ending with a user turn render the generation prompt and messages ending with an
        assistant turn the finished conversation with the suffix (training). A prompt for inference passes
        `add_generation_prompt` (and `continue_final_message`), vLLM's fields: see `prompt_kind`. A span covers a
        reply and the end token right after it (`<|im_end|>`, or `<|user|>` where the next query starts with it).
        `tools` (OpenAI's definitions) go into the system prompt in the hermes format, with tool calls and results
        (tools.py); `chat_template_kwargs` are for tokenizers' own templates (AutoTemplate) and unused here.
        """
        messages = normalize_messages(messages)
        if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):  # tools as hermes text
            messages = hermes_messages(messages, tools, self.default_system)
        system, turns = self._system_and_turns(messages)
        kind = prompt_kind(turns[-1]["role"], add_generation_prompt, continue_final_message)
        if len(turns) > 2 and not self.support_multi_round:
            raise ArgumentError(f"template {self.template_type!r} supports single-round dialogues only")
        text = self._fill("{{BOS}}") if self.auto_add_bos and self._adds_bos() else ""
        if system:
            text += self._fill(self.system_prefix, SYSTEM=self._clean(system, "system"))
        else:
            text += self._fill(self.prefix)
        before_query, end_of_query, assistant_header = self._prompt_parts()
        replies: list[tuple[int, int]] = []
        for i in range(0, len(turns), 2):
            query = self._clean(turns[i]["content"], "user", after_system=bool(system) and i == 0)
            if i + 1 == len(turns) and kind != "generate":  # the final user message, without the generation prompt
                text += self._fill(before_query) + query
                if kind == "no_generation_prompt":
                    text += self._needs(end_of_query, "a prompt without its generation prompt",
                                        "add_generation_prompt")
                break
            text += self._fill(self.prompt, QUERY=query)
            if i + 1 == len(turns):
                break
            start = len(text)
            text += self._fill(self.response, RESPONSE=self._clean(turns[i + 1]["content"], "assistant"))
            replies.append((start, len(text)))
            if i + 2 < len(turns):
                text += self._fill(self.chat_sep)
            elif kind == "train":
                text += self._fill(self.suffix)
            elif kind == "generate":  # a new assistant turn after the final assistant message
                text += self._fill(self.chat_sep or "") + self._needs(
                    assistant_header, "a new assistant turn after an assistant message (send continue_final_message "
                                      "true to continue that message instead)", "messages")
        if kind != "train":
            return text, []
        end_token = self._fill(self.suffix).strip()
        return text, [(start, self._past_end_token(text, stop, end_token)) for start, stop in replies]

    def _system_and_turns(self, messages: Messages) -> tuple[str | None, Messages]:
        """The system prompt (the template's default when the messages have none) and the turns after it. A template
        without a system role gets it in front of the first user message (Gemma-3's rule; ms-swift and vLLM fold)."""
        system = messages[0]["content"] if messages[0]["role"] == "system" else self.default_system
        turns = messages[1:] if messages[0]["role"] == "system" else messages
        if system and not self.support_system:
            turns = fold_system(system, turns, self)
            system = None
        return system, turns

    def _prompt_parts(self) -> tuple[str, str | None, str | None]:
        """`prompt` around its query: (the text before it, what ends the user's turn, the header that opens the
        assistant's). The last two exist where what follows the query begins with `chat_sep`, the separator that also
        ends a reply (ChatML: `<|im_end|>\n` + `<|im_start|>assistant\n`); Llama-2's ` [/INST]` does not split."""
        before, _, after = self.prompt.partition("{{QUERY}}")
        if self.chat_sep is None or not after.startswith(self.chat_sep):
            return before, None, None
        return before, self.chat_sep, after[len(self.chat_sep):]

    def _needs(self, part: str | None, what: str, param: str) -> str:
        if part is None:
            raise ArgumentError(f"template {self.template_type!r} cannot render {what}", param=param)
        return self._fill(part)

    @staticmethod
    def _past_end_token(text: str, stop: int, end_token: str) -> int:
        """Where the learned part of a reply ends: after `end_token` if it comes next (spaces between are kept)."""
        at = stop
        while at < len(text) and text[at].isspace():
            at += 1
        return at + len(end_token) if end_token and text.startswith(end_token, at) else stop

    # ---- encoding --------------------------------------------------------------------------------------------
    def encode(self, query: str | Messages, history: History | None = None, system: str | None = None, *,
               add_generation_prompt: bool | None = None, continue_final_message: bool = False,
               tools: list[dict[str, Any]] | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> Encoded:
        """Token ids for a query with history (the seed's shape) or OpenAI messages; labels when training (a
        conversation ending with a reply, `add_generation_prompt` left None). The keywords: `render`."""
        messages = query if isinstance(query, list) else to_messages(query, history, system)
        text, spans = self.render(messages, add_generation_prompt, continue_final_message, tools,
                                  {**self.chat_template_kwargs, **(chat_template_kwargs or {})})
        if not spans:
            return self._truncate(Encoded(list(self.tokenizer(text, add_special_tokens=False)["input_ids"])))
        # Training: the last reply's prompt is tokenized on its own, exactly as inference sends it (as ms-swift
        # does), so no token straddles it (`\n\n` + `Paris` may split `\n\n` unlike the prompt alone); earlier
        # replies stay inside it, as the next turn's prompt holds them.
        prompt = self.render(messages[:-1], add_generation_prompt=True)[0]
        cut = len(prompt) if text.startswith(prompt) and len(prompt) <= spans[-1][0] else spans[-1][0]
        input_ids, labels = [], []
        for offset, part in ((0, text[:cut]), (cut, text[cut:])):
            enc = self.tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
            input_ids += enc["input_ids"]
            labels += [tid if any(_overlaps(offset + a, offset + b, s, e) for s, e in spans) else IGNORE_INDEX
                       for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])]
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
        """Every id that ends a reply, the one list both engines stop on (unless `ignore_eos`): the template's end
        token, the tokenizer's eos, and each id of the checkpoint's generation_config.json `eos_token_id` (Llama-3.1's
        `<|eom_id|>`, Qwen's `<|endoftext|>`, ...; `load_tokenizer` reads them). A request's own stop ids add to it."""
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids(word) for word in self.stop_words]
        ids = [tid for tid in ids if isinstance(tid, int) and tid != tok.unk_token_id]
        ids += [tok.eos_token_id] + list(getattr(tok, "generation_eos_token_ids", None) or [])
        return [tid for i, tid in enumerate(ids) if tid is not None and tid not in ids[:i]]


def _overlaps(a: int, b: int, start: int, end: int) -> bool:
    """Whether token characters [a, b) overlap a reply's span [start, end): such a token belongs to the reply.

    A tokenizer may merge the separator's space into the reply's first token (`"[/INST] Paris"` -> `▁Paris`, whose
    offset starts before the reply); ms-swift and LLaMA-Factory label that token, and so do we. A zero-width token
    counts where it stands.
    """
    return a < end and max(b, a + 1) > start

"""Chat templates: messages -> token ids (and training labels), plus the words that end a reply.

A template is a handful of strings in ms-swift's shape (prefix, prompt, chat_sep, suffix, system_prefix).
The whole conversation is rendered to text and tokenized once, exactly as `tokenizer.apply_chat_template`
does, so ids match the official templates; labels come from the character spans of the replies.
"""
from __future__ import annotations

import logging
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
               continue_final_message: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """Text of the conversation, and the (start, end) character spans that carry the loss (training only).

        With the defaults, messages ending with a user turn render the generation prompt and messages ending with an
        assistant turn the finished conversation with the suffix (training). A prompt for inference passes
        `add_generation_prompt` (and `continue_final_message`), vLLM's fields: see `prompt_kind`. A span covers a
        reply and the end token right after it (`<|im_end|>`, or `<|user|>` where the next query starts with it).
        """
        system, turns = self._system_and_turns(normalize_messages(messages))
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
               add_generation_prompt: bool | None = None, continue_final_message: bool = False) -> Encoded:
        """Token ids for a query with history (the seed's shape) or OpenAI messages; labels when training (a
        conversation ending with a reply, `add_generation_prompt` left None). The keywords: `render`."""
        messages = query if isinstance(query, list) else to_messages(query, history, system)
        text, spans = self.render(messages, add_generation_prompt, continue_final_message)
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


class Llama2Template(Template):
    """Llama-2-chat: its jinja strips `<<SYS>>\n{system}\n<</SYS>>\n\n{first query}` as one string, so the system
    keeps its whitespace and that first query loses only its trailing whitespace; other messages are stripped."""

    def _clean(self, text: str, role: str, after_system: bool = False) -> str:
        if role == "system":
            return text
        return text.rstrip() if after_system else text.strip()


class AutoTemplate(Template):
    """The tokenizer's own `chat_template` (jinja), for models whose template has logic of its own."""

    def render(self, messages: Messages, add_generation_prompt: bool | None = None,
               continue_final_message: bool = False) -> tuple[str, list[tuple[int, int]]]:
        messages = normalize_messages(messages)
        if self.default_system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}] + messages
        if messages[0]["role"] == "system" and not self.support_system:
            system, messages = messages[0]["content"], messages[1:]
            messages = fold_system(system, messages, self) if system else messages
        kind = prompt_kind(messages[-1]["role"], add_generation_prompt, continue_final_message)
        if kind != "train":
            text = self._apply(messages, add_generation_prompt=kind == "generate",
                               continue_final_message=kind == "continue")
            if kind == "generate" and messages[-1]["role"] == "assistant" and text == self._apply(messages):
                raise ArgumentError("the model's chat template cannot open a new assistant turn after an assistant "
                                    "message: send continue_final_message true to continue that message, or end "
                                    "the conversation with a user message", param="messages")
            return text, []
        text = self._training_text(messages)
        tok = self.tokenizer
        spans, pos = [], 0
        end_tokens = [t for t in (self.suffix_token, tok.eos_token) if t]
        for k, m in enumerate(messages):  # find each reply in order; the end token is what the template put after it
            if m["role"] != "assistant":
                continue
            start, stop = self._locate_reply(text, messages, k, pos)
            stop = max(self._past_end_token(text, stop, end_token) for end_token in end_tokens)
            spans.append((start, stop))
            pos = stop
        return text, spans

    def _training_text(self, messages: Messages) -> str:
        """The finished conversation, starting with exactly the prompt that inference sends for its last reply.

        That is the official rendering, except where a template renders the prompt differently once a reply follows:
        Mistral-v0.3's writes the system prompt into the last user message only when that message ends the
        conversation (so a rendered training sample has no system prompt at all). There the text is the prompt, then
        what the template writes after the last user message's generation prompt (the reply and its end token).
        """
        text = self._apply(messages)
        prompt = self._apply(messages[:-1], add_generation_prompt=True)
        if text.startswith(prompt):
            return text
        query, reply = messages[-2]["content"], messages[-1]["content"]
        for needle in (query, query.strip()):
            in_text = text.rfind(needle, 0, max(text.rfind(reply.strip()), 0))
            in_prompt = prompt.rfind(needle)
            if in_text >= 0 and in_prompt >= 0:
                after = text[in_text + len(needle):]
                generation_prompt = prompt[in_prompt + len(needle):]
                if after.startswith(generation_prompt):
                    return prompt + after[len(generation_prompt):]
        raise ArgumentError("the tokenizer's chat_template renders the prompt differently when a reply follows; "
                            "cannot train on it: use --template_type")

    def _apply(self, messages: Messages, add_generation_prompt: bool = False,
               continue_final_message: bool = False) -> str:
        """`apply_chat_template` as text; the template refusing the conversation (its `raise_exception`) is the
        client's error, with the template's own message (vLLM answers it with a 400 too)."""
        import jinja2

        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ArgumentError("template 'auto' needs a tokenizer with a chat_template; use --template_type")
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                           continue_final_message=continue_final_message)
        except (jinja2.TemplateError, ValueError) as e:
            message = str(e).split("\n")[0]
            raise ArgumentError(f"the model's chat template rejected the conversation: {message}",
                                param="messages") from None

    @property
    def support_system(self) -> bool:
        """Whether the chat template takes a system message (Gemma-2's raises 'System role not supported');
        found out once by rendering one."""
        if self._system_role is None:
            try:
                self._apply([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                            add_generation_prompt=True)
                self._system_role = True
            except ArgumentError:
                self._system_role = False
        return self._system_role

    def _locate_reply(self, text: str, messages: Messages, k: int, pos: int) -> tuple[int, int]:
        """Character span of `messages[k]` (a reply) in `text`, searched after the prompt that precedes it.

        Searching from the rendered prompt `messages[:k]` keeps a short reply ("4") from matching inside an
        earlier query; templates that trim replies (Llama-3's `| trim`) are matched by the stripped text.
        """
        prompt = self._apply(messages[:k], add_generation_prompt=True)
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

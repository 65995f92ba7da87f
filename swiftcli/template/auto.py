"""'auto': the tokenizer's own chat_template (jinja), for models whose template has logic of its own (dates,
thinking, ...). Labels are found by locating each reply in the rendered text."""
from __future__ import annotations

from typing import Any

from ..errors import ArgumentError
from ..protocol import Messages, normalize_messages
from ..tools import template_messages
from .base import Template, fold_system, prompt_kind


class AutoTemplate(Template):
    """The tokenizer's own `chat_template` (jinja), for models whose template has logic of its own."""

    def render(self, messages: Messages, add_generation_prompt: bool | None = None,
               continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
               chat_template_kwargs: dict[str, Any] | None = None) -> tuple[str, list[tuple[int, int]]]:
        messages = template_messages(normalize_messages(messages))
        extra = {**({"tools": tools} if tools else {}), **(chat_template_kwargs or {})}
        if self.default_system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.default_system}] + messages
        if messages[0]["role"] == "system" and not self.support_system:
            system, messages = messages[0]["content"], messages[1:]
            messages = fold_system(system, messages, self) if system else messages
        kind = prompt_kind(messages[-1]["role"], add_generation_prompt, continue_final_message)
        if kind != "train":
            text = self._apply(messages, add_generation_prompt=kind == "generate",
                               continue_final_message=kind == "continue", **extra)
            if kind == "generate" and messages[-1]["role"] == "assistant" and text == self._apply(messages, **extra):
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
               continue_final_message: bool = False, **extra: Any) -> str:
        """`apply_chat_template` as text; the template refusing the conversation (its `raise_exception`) is the
        client's error, with the template's own message (vLLM answers it with a 400 too)."""
        import jinja2

        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ArgumentError("template 'auto' needs a tokenizer with a chat_template; use --template_type")
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                           continue_final_message=continue_final_message, **extra)
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

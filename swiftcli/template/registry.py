"""Every registered template by name, and `get_template`, which binds a copy of one to a tokenizer."""
from __future__ import annotations

from copy import copy
from typing import Any

from ..errors import ArgumentError, closest
from .auto import AutoTemplate
from .base import Template

DEFAULT_SYSTEM = "You are a helpful assistant."
LLAMA_DEFAULT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.")


class Llama2Template(Template):
    """Llama-2-chat: its jinja strips `<<SYS>>\n{system}\n<</SYS>>\n\n{first query}` as one string, so the system
    keeps its whitespace and that first query loses only its trailing whitespace; other messages are stripped."""

    def _clean(self, text: str, role: str, after_system: bool = False) -> str:
        if role == "system":
            return text
        return text.rstrip() if after_system else text.strip()


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

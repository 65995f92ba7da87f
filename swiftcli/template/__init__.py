"""Chat templates: messages -> token ids (and training labels), plus the words that end a reply.

A template is a handful of strings in ms-swift's shape (prefix, prompt, chat_sep, suffix, system_prefix).
The whole conversation is rendered to text and tokenized once, exactly as `tokenizer.apply_chat_template`
does, so ids match the official templates; labels come from the character spans of the replies.
"""
from __future__ import annotations

from .auto import AutoTemplate
from .base import IGNORE_INDEX, Encoded, Template, fold_system, prompt_kind
from .registry import (DEFAULT_SYSTEM, LLAMA_DEFAULT_SYSTEM, TEMPLATE_MAPPING, Llama2Template, TemplateType,
                       get_template, register_template)

__all__ = ["AutoTemplate", "DEFAULT_SYSTEM", "Encoded", "IGNORE_INDEX", "LLAMA_DEFAULT_SYSTEM", "Llama2Template",
           "TEMPLATE_MAPPING", "Template", "TemplateType", "fold_system", "get_template", "prompt_kind",
           "register_template"]

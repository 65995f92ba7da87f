"""Structured output on the pt backend: xgrammar, the grammar library vLLM uses, so both backends accept the same
schemas and constrain decoding the same way. Each constrained row has a matcher; before sampling it masks the
logits to the tokens the grammar allows next, after sampling it advances by the chosen token. A finished grammar
allows only the row's stop tokens, so the reply ends as any other does."""
from __future__ import annotations

import functools
import json
from typing import Any

import torch

from ..request_config import ANY_OBJECT, StructuredOutputs, json_text


@functools.cache
def _compiler(tokenizer: Any) -> Any:
    """One xgrammar compiler per tokenizer (it caches compiled grammars itself)."""
    import xgrammar as xgr

    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer)))


def compile_grammar(tokenizer: Any, spec: StructuredOutputs) -> Any:
    compiler = _compiler(tokenizer)
    if spec.json is not None:
        return compiler.compile_json_schema(json_text(spec.json))
    if spec.json_object:  # an object, as OpenAI promises (any JSON would allow `[false]`)
        return compiler.compile_json_schema(json_text(ANY_OBJECT))
    if spec.regex is not None:
        return compiler.compile_regex(spec.regex)
    if spec.choice is not None:  # one of the strings, exactly (vLLM's guided_choice)
        return compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in spec.choice))
    return compiler.compile_grammar(spec.grammar)


class Matcher:
    """One row's place in its grammar."""

    def __init__(self, tokenizer: Any, spec: StructuredOutputs, stop_ids: set[int]):
        import xgrammar as xgr

        self.vocab = len(tokenizer)
        self.matcher = xgr.GrammarMatcher(compile_grammar(tokenizer, spec), override_stop_tokens=sorted(stop_ids))
        self.bitmask = xgr.allocate_token_bitmask(1, self.vocab)

    def mask(self, logits: torch.Tensor) -> None:
        """logits [V] of this row, in place: -inf for every token the grammar does not allow next (and for the
        model's padding ids past the tokenizer's vocabulary)."""
        import xgrammar as xgr

        self.matcher.fill_next_token_bitmask(self.bitmask)
        row = logits[None, :self.vocab]
        xgr.apply_token_bitmask_inplace(row, self.bitmask.to(logits.device))
        logits[self.vocab:] = float("-inf")

    def accept(self, token_id: int) -> None:
        self.matcher.accept_token(token_id)

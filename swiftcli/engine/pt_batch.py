"""The pt engine's rows and running batch: what one sequence carries, and the KV-cache bookkeeping of a batch.

Rows are left-padded so that every row's next token sits in the last column; `mask` marks the cached positions.
Batches are stacked (`merge`) when new rows join and shrunk (`prune`) when rows leave, so the cache never holds a
finished row. A decode step writes its token into room the cache's layers keep ahead (`PreallocatedLayer`) instead of
concatenating the whole cache. With the static decoder the cache lives in its slots instead, and these only move rows
between slots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ..protocol import RequestConfig, TokenLogprob
from ..template import Template
from .detokenizer import IncrementalDetokenizer
from .grammar import Matcher
from .sampling import RowSampling
from .static_decode import StaticDecoder

RowSpec = tuple[int, int, list[int], RequestConfig, str | None]
"""(request index, choice index, prompt ids, config, adapter): what a tensor-parallel follower rebuilds a row from."""


@dataclass
class Row:
    """One sequence being generated (a request has n of them)."""

    request_index: int
    choice_index: int
    prompt_ids: list[int]
    config: RequestConfig
    sampling: RowSampling
    detok: IncrementalDetokenizer
    stop_ids: set[int]
    adapter: str | None
    events: Any
    """Where the scheduler reports (row, new text, finish_reason, logprob) after each token, or an exception."""
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Filled at prefill when the config asks for them (the first row of a request only)."""
    finish_reason: str | None = None
    aborted: bool = False
    """Set by the consumer that went away; the scheduler reads it once per step (`abort_seen`)."""
    abort_seen: bool = False
    next_token: int = 0
    position: int = 0
    matcher: Matcher | None = None
    """Structured output: the grammar the row's tokens must follow (engine/grammar.py)."""


@dataclass
class Batch:
    """The running rows and their KV cache; `mask` covers exactly the cached positions.

    With the static decoder, cache and mask are None: row i's cache is the decoder's slot i.
    """

    rows: list[Row]
    cache: Any
    mask: torch.Tensor | None


class PreallocatedLayer(DynamicLayer):
    """transformers' DynamicLayer, except that keys/values are views of buffers with ROOM positions to spare, so a
    decode step writes its token in place. DynamicLayer concatenates the whole cache every step (O(length) copies: a
    16-row step of SmolLM2 on CPU is 1.27x as fast without them at 512 positions, 1.39x at 1024;
    scripts/bench_kv_cache.py). Anything that replaces keys/values (merge, prune, trim) makes the next update copy them
    into a new buffer once."""

    ROOM = 128

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        length, new = (self.keys.shape[-2] if self.keys.numel() else 0), key_states.shape[-2]
        ours = self.buffers is not None and self.keys.data_ptr() == self.buffers[0].data_ptr() \
            and self.keys.shape[:2] == self.buffers[0].shape[:2] and length + new <= self.buffers[0].shape[-2]
        if not ours:
            batch, heads, _, dim = key_states.shape
            self.buffers = (key_states.new_empty(batch, heads, length + new + self.ROOM, dim),
                            value_states.new_empty(batch, heads, length + new + self.ROOM, dim))
            if length:
                self.buffers[0][:, :, :length] = self.keys
                self.buffers[1][:, :, :length] = self.values
        keys, values = self.buffers
        keys[:, :, length:length + new] = key_states
        values[:, :, length:length + new] = value_states
        self.keys, self.values = keys[:, :, :length + new], values[:, :, :length + new]
        return self.keys, self.values


def new_cache(config: Any) -> DynamicCache:
    """The cache a prefill fills: the model's own DynamicCache, its full-attention layers preallocating (sliding-window
    layers stay as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def new_row(template: Template, spec: RowSpec, events: Any) -> Row:
    """Choice k of request `index`: everything a rank needs to generate it (see `spec`)."""
    index, k, prompt_ids, config, adapter = spec
    stop = config.stop if config.ignore_eos else list(dict.fromkeys(config.stop + template.stop_words))
    stop_ids = set(config.stop_token_ids) | (set() if config.ignore_eos else set(template.stop_token_ids))
    matcher = Matcher(template.tokenizer, config.structured_outputs, stop_ids) if config.structured_outputs else None
    return Row(index, k, prompt_ids, config, RowSampling.from_config(config, seed_offset=k),
               IncrementalDetokenizer(template.tokenizer, prompt_ids, stop, config.min_tokens,
                                      config.skip_special_tokens),
               stop_ids, adapter, events, logprobs=[] if config.logprobs else None, matcher=matcher)


def spec(row: Row) -> RowSpec:
    """What a tensor-parallel follower needs to rebuild a row (`new_row`)."""
    return row.request_index, row.choice_index, row.prompt_ids, row.config, row.adapter


def scores_prompt(row: Row) -> bool:
    """Whether this row reports its request's prompt logprobs (one row per request does)."""
    return row.choice_index == 0 and row.config.prompt_logprobs is not None


def prefill_groups(rows: list[Row]) -> list[list[Row]]:
    """Rows to prefill together: a row that scores its prompt needs every position's logits ([T, V]), so it
    goes alone (its memory stays one prompt's); the rest in one batch."""
    scored = [[r] for r in rows if scores_prompt(r)]
    rest = [r for r in rows if not scores_prompt(r)]
    return scored + ([rest] if rest else [])


def merge(running: Batch | None, new: Batch | None, static: StaticDecoder | None) -> Batch | None:
    """Stack two batches: both caches are left-padded to the longer one (padding is masked out).

    With the static decoder the new rows' prefill cache is copied to the slots after the running rows'."""
    if static is not None and new is not None:
        start = len(running.rows) if running else 0
        static.load(start, new.cache, [r.position for r in new.rows])
        return Batch((running.rows if running else []) + new.rows, None, None)
    if running is None or new is None:
        return running or new
    width = max(running.mask.shape[1], new.mask.shape[1])
    for a, b in zip(running.cache.layers, new.cache.layers):
        a.keys = torch.cat([_pad_left(a.keys, width, 2), _pad_left(b.keys, width, 2)])
        a.values = torch.cat([_pad_left(a.values, width, 2), _pad_left(b.values, width, 2)])
    mask = torch.cat([_pad_left(running.mask, width, 1), _pad_left(new.mask, width, 1)])
    return Batch(running.rows + new.rows, running.cache, mask)


def prune(batch: Batch, keep: list[int], static: StaticDecoder | None) -> Batch | None:
    """The batch of rows `keep` (indices into batch.rows); None when no row is left."""
    rows = batch.rows
    if not keep:
        return None
    if batch.cache is None:  # static slots: the kept rows move to the first slots
        if len(keep) < len(rows):
            static.keep(keep, max(rows[i].position for i in keep))
        return Batch([rows[i] for i in keep], None, None)
    if len(keep) < len(rows):
        index = torch.tensor(keep, device=batch.mask.device)
        batch.cache.batch_select_indices(index)
        batch = Batch([rows[i] for i in keep], batch.cache, batch.mask[index])
    return _trim_left(batch)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _trim_left(batch: Batch) -> Batch:
    """Drop leading cache columns that no remaining row uses (left by rows that finished)."""
    used = batch.mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else 0
    if start > 0:
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
        batch.mask = batch.mask[:, start:]
    return batch

"""The transformers + peft engine: our own batched decode loop over a left-padded batch and a KV cache.

Owning the loop (instead of `model.generate`) gives per-request sampling settings in one batch, per-request
LoRA adapters (peft's `adapter_names`), streaming without threads, and finished rows leaving the batch.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, TokenLogprob, Usage
from ..template import Template
from .base import EngineInfo, InferEngine
from .detokenizer import IncrementalDetokenizer
from .sampling import RowSampling, apply_penalties, sample

logger = logging.getLogger("swiftcli")
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class _Row:
    """One sequence being generated (a request has n of them)."""

    request_index: int
    choice_index: int
    prompt_ids: list[int]
    config: RequestConfig
    sampling: RowSampling
    detok: IncrementalDetokenizer
    stop_ids: set[int]
    adapter: str | None
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


class PtEngine(InferEngine):
    def __init__(self, model: Any, template: Template, info: EngineInfo, default_config: RequestConfig,
                 max_batch_size: int = 16):
        self.model, self.template, self.info = model, template, info
        self.tokenizer = template.tokenizer
        self.default_config = default_config
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device
        if info.adapters:
            self.model = _attach_adapters(model, info.adapters)

    # ---- public API ------------------------------------------------------------------------------------------
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None,
              use_tqdm: bool = False) -> list[InferResponse]:
        rows = [row for i, r in enumerate(requests) for row in self._make_rows(i, r, config)]
        for start in range(0, len(rows), self.max_batch_size):
            for _ in self._decode(rows[start:start + self.max_batch_size]):
                pass
        return [self._response([r for r in rows if r.request_index == i]) for i in range(len(requests))]

    def infer_stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[StreamDelta]:
        rows = self._make_rows(0, request, config)
        for row, delta in self._decode(rows):
            if delta or row.finish_reason:
                yield StreamDelta(row.choice_index, delta, row.finish_reason,
                                  row.logprobs[-1:] if row.logprobs is not None and row.output_ids else None)
        yield StreamDelta(0, "", None, usage=self._response(rows).usage)

    # ---- building rows ---------------------------------------------------------------------------------------
    def _make_rows(self, index: int, request: InferRequest, config: RequestConfig | None) -> list[_Row]:
        prompt_ids = self.encode(request).input_ids
        config = self.resolve_config(config, len(prompt_ids))
        stop = list(dict.fromkeys(config.stop + self.template.stop_words))
        stop_ids = set() if config.ignore_eos else set(self.template.stop_token_ids)
        return [_Row(index, k, prompt_ids, config, RowSampling.from_config(config, seed_offset=k),
                     IncrementalDetokenizer(self.tokenizer, prompt_ids, [] if config.ignore_eos else stop),
                     stop_ids, request.adapter, logprobs=[] if config.logprobs else None)
                for k in range(config.n)]

    def _response(self, rows: list[_Row]) -> InferResponse:
        choices = [Choice(r.choice_index, r.detok.text, r.finish_reason, r.output_ids, r.logprobs) for r in rows]
        return InferResponse(choices, Usage(len(rows[0].prompt_ids), sum(len(r.output_ids) for r in rows)))

    # ---- the decode loop -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _decode(self, rows: list[_Row]) -> Iterator[tuple[_Row, str]]:
        """Prefill the batch, then one token per live row per step; yields (row, new text) as text settles."""
        pad = self.tokenizer.pad_token_id
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows])
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        live, cache = list(rows), None
        while live:
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True, logits_to_keep=1, **self._adapter_kwargs(live))
            cache = out.past_key_values
            logits = out.logits[:, -1].float()
            raw_logprobs = torch.log_softmax(logits, dim=-1) if any(r.logprobs is not None for r in live) else None
            logits = apply_penalties(logits, [r.prompt_ids + r.output_ids for r in live], [r.sampling for r in live])
            next_ids = sample(logits, [r.sampling for r in live]).tolist()
            keep = []
            for i, (row, tid) in enumerate(zip(live, next_ids)):
                delta = self._advance(row, tid, raw_logprobs[i] if raw_logprobs is not None else None)
                yield row, delta
                if row.finish_reason is None:
                    keep.append(i)
            if len(keep) < len(live):
                live = [live[i] for i in keep]
                if not live:
                    break
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions, next_ids = mask[index], positions[index], [next_ids[i] for i in keep]
            input_ids = torch.tensor(next_ids, device=self.device)[:, None]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions = positions[:, -1:] + 1

    def _advance(self, row: _Row, token_id: int, logprobs: torch.Tensor | None) -> str:
        """Account one sampled token to its row; returns the text it settled and sets finish_reason when done."""
        if token_id in row.stop_ids:
            row.finish_reason = "stop"
            return row.detok.flush()
        row.output_ids.append(token_id)
        if row.logprobs is not None and logprobs is not None:
            row.logprobs.append(self._token_logprob(token_id, logprobs, row.config.top_logprobs or 0))
        delta = row.detok.add(token_id)
        if row.detok.stopped:
            row.finish_reason = "stop"
        elif len(row.output_ids) >= row.config.max_tokens:
            row.finish_reason = "length"
            delta += row.detok.flush()
        return delta

    def _token_logprob(self, token_id: int, logprobs: torch.Tensor, top: int) -> TokenLogprob:
        decode = self.tokenizer.decode
        top_items = []
        if top:
            values, ids = logprobs.topk(top)
            top_items = [(decode([t]), v) for t, v in zip(ids.tolist(), values.tolist())]
        return TokenLogprob(decode([token_id]), float(logprobs[token_id]), top_items)

    def _adapter_kwargs(self, live: list[_Row]) -> dict[str, Any]:
        if not self.info.adapters:
            return {}
        return {"adapter_names": [r.adapter or BASE_ADAPTER for r in live]}


def _attach_adapters(model: Any, adapters: dict[str, str]) -> Any:
    """Load every LoRA under its own name; requests pick one (or none) per row."""
    from peft import PeftModel

    names = iter(adapters.items())
    name, path = next(names)
    logger.info("Loading LoRA %s from %s", name, path)
    model = PeftModel.from_pretrained(model, path, adapter_name=name)
    for name, path in names:
        logger.info("Loading LoRA %s from %s", name, path)
        model.load_adapter(path, adapter_name=name)
    return model.eval()

"""Next-token choice for the pt engine: per-row logit bias, penalties, temperature, top-k/top-p/min-p, seeded
sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..protocol import RequestConfig


@dataclass
class RowSampling:
    """One row of a batch: its request's settings with every default resolved, and its seeded generator."""

    config: RequestConfig
    """RequestConfig.resolved(): no None left in the sampling fields."""
    generator: torch.Generator | None

    @classmethod
    def from_config(cls, config: RequestConfig, seed_offset: int = 0) -> RowSampling:
        generator = None
        if config.seed is not None:
            generator = torch.Generator().manual_seed(config.seed + seed_offset)
        return cls(config.resolved(), generator)

    @property
    def greedy(self) -> bool:
        return self.config.temperature == 0

    @property
    def plain_greedy(self) -> bool:
        """Greedy on the raw logits: nothing changes them before the argmax."""
        c = self.config
        return (self.greedy and c.repetition_penalty == 1 and not c.presence_penalty and not c.frequency_penalty
                and not c.logit_bias and c.structured_outputs is None)


def apply_penalties(logits: torch.Tensor, seen: list[list[int]], rows: list[RowSampling]) -> torch.Tensor:
    """Logit bias (added, as vLLM does), then repetition (multiplicative, HF), presence and frequency (additive,
    OpenAI) penalties, per row."""
    for i, (c, tokens) in enumerate(zip((row.config for row in rows), seen)):
        if c.logit_bias:
            ids = torch.tensor(list(c.logit_bias), device=logits.device)
            logits[i, ids] += torch.tensor(list(c.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        if not tokens or (c.repetition_penalty == 1 and not c.presence_penalty and not c.frequency_penalty):
            continue
        ids, counts = torch.tensor(tokens, device=logits.device).unique(return_counts=True)
        picked = logits[i, ids]
        if c.repetition_penalty != 1:
            picked = torch.where(picked > 0, picked / c.repetition_penalty, picked * c.repetition_penalty)
        picked = picked - c.presence_penalty - c.frequency_penalty * counts.to(picked.dtype)
        logits[i, ids] = picked
    return logits


def sample(logits: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
    """logits: [B, V] float32 -> next token ids [B]."""
    out = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        if row.greedy:
            continue
        c = row.config
        scores = logits[i] / c.temperature
        if c.min_p:  # vLLM's order: min-p first, relative to the likeliest token
            probs = torch.softmax(scores, dim=-1)
            scores = scores.masked_fill(probs < c.min_p * probs.max(), float("-inf"))
        if c.top_k:
            kth = torch.topk(scores, min(c.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if c.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            drop = sorted_probs.cumsum(0) - sorted_probs > c.top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0))
        if row.generator is not None and row.generator.device != probs.device:  # seeded: the CPU generator draws
            probs = probs.cpu()
        out[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
    return out

"""Next-token choice for the pt engine: per-row logit bias, penalties, temperature, top-k/top-p, seeded sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..protocol import RequestConfig


@dataclass
class RowSampling:
    """A request's sampling settings with every default resolved (one row of a batch)."""

    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    generator: torch.Generator | None
    logit_bias: dict[int, float]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_config(cls, config: RequestConfig, seed_offset: int = 0) -> "RowSampling":
        generator = None
        if config.seed is not None:
            generator = torch.Generator().manual_seed(config.seed + seed_offset)
        return cls(temperature=1.0 if config.temperature is None else config.temperature,
                   top_k=config.top_k if config.top_k and config.top_k > 0 else 0,
                   top_p=1.0 if config.top_p is None else config.top_p,
                   repetition_penalty=config.repetition_penalty or 1.0,
                   presence_penalty=config.presence_penalty, frequency_penalty=config.frequency_penalty,
                   generator=generator, logit_bias=config.logit_bias)

    @property
    def plain_greedy(self) -> bool:
        """Greedy on the raw logits: nothing changes them before the argmax."""
        return (self.greedy and self.repetition_penalty == 1 and not self.presence_penalty
                and not self.frequency_penalty and not self.logit_bias)


def apply_penalties(logits: torch.Tensor, seen: list[list[int]], rows: list[RowSampling]) -> torch.Tensor:
    """Logit bias (added, as vLLM does), then repetition (multiplicative, HF), presence and frequency (additive,
    OpenAI) penalties, per row."""
    for i, (row, tokens) in enumerate(zip(rows, seen)):
        if row.logit_bias:
            ids = torch.tensor(list(row.logit_bias), device=logits.device)
            logits[i, ids] += torch.tensor(list(row.logit_bias.values()), dtype=logits.dtype, device=logits.device)
        if not tokens or (row.repetition_penalty == 1 and not row.presence_penalty and not row.frequency_penalty):
            continue
        ids, counts = torch.tensor(tokens, device=logits.device).unique(return_counts=True)
        picked = logits[i, ids]
        if row.repetition_penalty != 1:
            picked = torch.where(picked > 0, picked / row.repetition_penalty, picked * row.repetition_penalty)
        picked = picked - row.presence_penalty - row.frequency_penalty * counts.to(picked.dtype)
        logits[i, ids] = picked
    return logits


def sample(logits: torch.Tensor, rows: list[RowSampling]) -> torch.Tensor:
    """logits: [B, V] float32 -> next token ids [B]."""
    out = logits.argmax(dim=-1)
    for i, row in enumerate(rows):
        if row.greedy:
            continue
        scores = logits[i] / row.temperature
        if row.top_k:
            kth = torch.topk(scores, min(row.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if row.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            drop = sorted_probs.cumsum(0) - sorted_probs > row.top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0))
        if row.generator is not None and row.generator.device != probs.device:  # seeded: the CPU generator draws
            probs = probs.cpu()
        out[i] = torch.multinomial(probs, 1, generator=row.generator)[0]
    return out

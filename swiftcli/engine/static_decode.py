"""The pt engine's decode step over a static KV cache, replayed from CUDA graphs on GPU.

Eager decoding of a 1.5B model launches well over a thousand small kernels per token, and at batch 1 the GPU waits
on those launches, not on memory. Here every running row owns a slot of a preallocated cache (per layer
[slots, kv_heads, length, head_dim]) and writes its token's keys and values at its own position, so a decode step
has fixed shapes and no data-dependent Python: on CUDA it is captured once per (batch bucket, length bucket) in a
CUDA graph, optionally compiled first with torch.compile (which fuses the many small elementwise kernels), and then
replayed. A step reads only the first `length bucket` positions of each slot; padding rows of a bucket use slots
nobody runs in. Prefill stays eager (the engine's own), and its cache is copied into the slots.

The step calls the transformers model itself with a cache object whose `update` scatters into the slots, a 4D mask
(returned as-is by transformers' mask helpers) and, for the duration of the step, an attention function of ours that
reads grouped KV heads in place instead of repeating them.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("swiftcli")

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
"""Decoder-only models whose layers all use full causal attention through transformers' attention interface."""
ATTENTION_NAME = "swift_static_decode"
MIN_LENGTH = 256


def unsupported_reason(model: Any) -> str | None:
    """Why the static decode path can't run this model (None when it can)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "sliding_window", None) is not None or any(
            t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "sliding-window attention"
    return None


def _bucket(n: int, minimum: int) -> int:
    """The smallest power of two >= n (and >= minimum)."""
    size = minimum
    while size < n:
        size *= 2
    return size


def decode_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor, scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """One query token per row against its slot: query [B, H, 1, D], key/value [B, KV, L, D], mask [B, 1, 1, L] bool.

    Query heads are grouped under their KV head (H = KV * groups, as transformers' repeat_kv orders them), so the
    grouped KV heads are read once, in place, and no [B, H, L, D] copy is made.
    """
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    scores = scores.masked_fill(~attention_mask, float("-inf"))  # [B, KV, groups, L]
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, KV, groups, D]
    return out.reshape(batch, 1, heads, dim), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, decode_attention)


@contextlib.contextmanager
def _attention(config: Any):
    """Route the model's attention to `decode_attention` for one decode step (prefill keeps the model's own)."""
    saved = config._attn_implementation_internal
    config._attn_implementation_internal = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation_internal = saved


class _SlotCache:
    """The `past_key_values` of one decode step over views [B, KV, L, D] of the slots: row b writes at pos[b]."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], positions: torch.Tensor):
        self.keys, self.values, self.positions = keys, values, positions
        self.rows = torch.arange(positions.shape[0], device=positions.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self.rows, :, self.positions] = key_states[:, :, 0]
        values[self.rows, :, self.positions] = value_states[:, :, 0]
        return keys, values


class StaticDecoder:
    """Slots of KV cache for the running rows (row i of the engine's batch is slot i) and the decode step over them."""

    def __init__(self, model: Any, cuda_graphs: bool | None = None, compile: bool = False):
        _register_attention()
        self.model = model
        config = model.config
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.num_layers = config.num_hidden_layers
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.compiled = compile
        self.min_batch = 2
        """The smallest batch bucket. 2, not 1: torch.compile specializes size-1 dimensions, so a batch-1 bucket
        costs a second compilation, and on an H100 it ran no faster (cuBLAS picks the same kernels for 1 and 2 rows)."""
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = self.length = 0  # the cache's capacity
        self.ids = self.positions = self.columns = torch.empty(0)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self._forward: Callable[..., torch.Tensor] = self._decode
        if compile:  # batch and length are marked dynamic (_body): one compilation serves every bucket
            self._forward = torch.compile(self._decode)

    # ---- capacity and slots ----------------------------------------------------------------------------------
    def reserve(self, rows: int, length: int) -> None:
        """Grow the cache (by doubling) to hold `rows` slots of `length` positions; keeps what the slots hold."""
        slots = _bucket(rows, max(self.slots, 2))
        length = _bucket(length, max(self.length, MIN_LENGTH))
        if slots == self.slots and length == self.length:
            return
        shape = (slots, self.kv_heads, length, self.head_dim)
        for cache in (self.keys, self.values):
            for i in range(self.num_layers):
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if i < len(cache):
                    grown[:self.slots, :, :self.length] = cache[i]
                    cache[i] = grown
                else:
                    cache.append(grown)
        self.ids = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=self.device)
        self.columns = torch.arange(length, device=self.device)
        self.slots, self.length = slots, length
        self.graphs.clear()  # they captured the old buffers' addresses
        self.pool = None

    def load(self, start: int, cache: Any, lengths: list[int]) -> None:
        """Copy a prefill's left-padded cache (row j holds its `lengths[j]` positions right-aligned) to slots start+j."""
        width, n = cache.layers[0].keys.shape[2], len(lengths)
        self.reserve(start + n, width + 1)
        shift = width - torch.tensor(lengths, device=self.device)
        source = (torch.arange(width, device=self.device)[None, :] + shift[:, None]).clamp(max=width - 1)
        source = source[:, None, :, None].expand(n, self.kv_heads, width, self.head_dim)
        for layer, keys, values in zip(cache.layers, self.keys, self.values):
            keys[start:start + n, :, :width] = layer.keys.gather(2, source)
            values[start:start + n, :, :width] = layer.values.gather(2, source)

    def keep(self, index: list[int], used: int) -> None:
        """Rows `index` go on (in that order) in slots 0..len(index)-1; `used`: positions any of them has filled."""
        if index == list(range(len(index))):
            return
        source = torch.tensor(index, device=self.device)
        for cache in (self.keys, self.values):
            for layer in cache:
                layer[:len(index), :, :used] = layer[source, :, :used]

    # ---- the step --------------------------------------------------------------------------------------------
    def _decode(self, ids: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor,
                keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
        """Logits [B, V] of one token per row: ids/positions [B, 1], columns: arange(L), keys/values [B, KV, L, D]."""
        cache = _SlotCache(keys, values, positions[:, 0])
        mask = (columns[None, :] <= positions)[:, None, None, :]
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _body(self, batch: int, length: int) -> torch.Tensor:
        """One step of the first `batch` slots: logits, and the greedy next token/position left in ids/positions."""
        ids, positions, columns = self.ids[:batch], self.positions[:batch], self.columns[:length]
        keys = [k[:batch, :, :length] for k in self.keys]
        values = [v[:batch, :, :length] for v in self.values]
        # With torch.compile: one compilation for every batch bucket > 1 and every length bucket. The views' strides
        # follow the cache's capacity: the first step that reads fewer positions than the cache holds (after it grew)
        # compiles once more, with the strides dynamic from then on.
        if self.compiled:
            for t in (ids, positions, *keys, *values) if batch > 1 else ():
                torch._dynamo.mark_dynamic(t, 0)
            for t, dim in ((columns, 0), *((t, 2) for t in (*keys, *values))):
                torch._dynamo.mark_dynamic(t, dim)
        with _attention(self.model.config):
            logits = self._forward(ids, positions, columns, keys, values)
        ids.copy_(logits.argmax(dim=-1, keepdim=True))
        positions.add_(1)
        return logits

    def _run(self, ids: list[int], positions: list[int], steps: int) -> tuple[int, Callable[[], torch.Tensor]]:
        """Set the inputs and return (batch size run, a function doing one step and returning its logits)."""
        n = len(ids)
        self.reserve(n, max(positions) + steps)
        fixed = self.cuda_graphs or self.compiled  # shapes from a few buckets (graphs are per shape)
        batch = _bucket(n, self.min_batch) if fixed else n
        length = _bucket(max(positions) + steps, MIN_LENGTH) if fixed else max(positions) + steps
        pad = [0] * (batch - n)  # padding rows: token 0 at position 0 of slots no row runs in

        def fill() -> None:
            self.ids[:batch, 0].copy_(torch.tensor(ids + pad))
            self.positions[:batch, 0].copy_(torch.tensor(positions + pad))

        fill()
        if not self.cuda_graphs:
            return batch, lambda: self._body(batch, length)
        if (batch, length) not in self.graphs:
            self.graphs[(batch, length)] = self._capture(batch, length)
            fill()  # the warm-up steps advanced the inputs
        graph, logits = self.graphs[(batch, length)]

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        return batch, replay

    def _capture(self, batch: int, length: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up (each time from the step's real inputs: it rewrites the rows' own keys/values, and an advanced
        position could fall outside `length`), then capture."""
        inputs = self.ids[:batch].clone(), self.positions[:batch].clone()

        def warm_up() -> None:
            self.ids[:batch].copy_(inputs[0])
            self.positions[:batch].copy_(inputs[1])
            self._body(batch, length)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                warm_up()  # with torch.compile: compiles (once) and autotunes
            except Exception:  # a model or setup that does not compile still gets CUDA graphs
                if not self.compiled:
                    raise
                logger.warning("torch.compile of the decode step failed; capturing it uncompiled", exc_info=True)
                self._forward, self.compiled = self._decode, False
                warm_up()
            warm_up()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self._body(batch, length)
        self.pool = graph.pool()  # every graph of this cache shares the first one's memory (they never overlap)
        logger.debug("captured the decode step for batch %d, length %d", batch, length)
        return graph, logits

    def forward(self, ids: list[int], positions: list[int]) -> torch.Tensor:
        """Logits [n, V] (float32) of token ids[i] at positions[i] in slot i, its keys/values written to the cache."""
        _, step = self._run(ids, positions, 1)
        return step()[:len(ids)].float()

    def greedy(self, ids: list[int], positions: list[int], steps: int) -> list[list[int]]:
        """`steps` greedy tokens for every row, fed back on the device with one sync at the end: [row][step]."""
        batch, step = self._run(ids, positions, steps)
        tokens = torch.empty(steps, batch, dtype=torch.long, device=self.device)
        for j in range(steps):
            step()
            tokens[j].copy_(self.ids[:batch, 0])
        return tokens[:, :len(ids)].T.tolist()

"""The pt engine's decode step over a static KV cache, replayed from CUDA graphs on GPU.

Eager decoding of a 1.5B model launches well over a thousand small kernels per token, and at batch 1 the GPU waits
on those launches, not on memory. Here every running row owns a slot of a preallocated cache (per layer
[slots, kv_heads, length, head_dim]) and writes its token's keys and values at its own position, so a decode step
has fixed shapes and no data-dependent Python: on CUDA it is captured once per (batch bucket, length bucket) in a
CUDA graph and then replayed. A step reads only the first `length bucket` positions of each slot (the smallest power
of two >= 256 that holds the rows' positions); padding rows of a bucket use slots nobody runs in. Prefill stays eager
(the engine's own), and its cache is copied into the slots.

The step is our own forward of the llama-family decoder layer (the registry's STATIC_DECODE_MODEL_TYPES) over the
model's own weights: q/k/v and gate/up are concatenated once, at load, into one matrix each (the model's parameters
become views of them, so memory does not grow and the eager prefill reads the same values). With torch.compile one
decoder layer is compiled and called for every layer (regional compilation: seconds instead of a minute), and a
batch of one runs in a bucket of its own, where inductor turns every matrix-vector product into a bandwidth-tuned
Triton reduction with the norm, bias, activation and residual fused in (gpt-fast's recipe). With torch.compile on
CUDA, the batch-1 step runs our own Triton kernels instead (fused_layer.fused_decoder_layer: five a layer, the
attention reading only the filled positions); batches of more rows keep the compiled step.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from ..registry import STATIC_DECODE_MODEL_TYPES
from .fused_layer import (LayerShape, decoder_layer, down_projection, fused_decoder_layer, fused_supported, gemv,
                          layer_weights, linear)

logger = logging.getLogger("swiftcli")

MIN_LENGTH = 256
COMPILE_OPTIONS = {"coordinate_descent_tuning": True}
"""Inductor options of the compiled step. With coordinate descent tuning, a product of one row with a matrix is
decomposed into a tuned reduction (inductor's mm decomposition) instead of a cuBLAS call: batch-1 bandwidth."""


def unsupported_reason(model: Any) -> str | None:
    """Why the static decode path can't run this model (None when it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in STATIC_DECODE_MODEL_TYPES:
        return f"model type {model_type} is not one of {', '.join(STATIC_DECODE_MODEL_TYPES)}"
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


class StaticDecoder:
    """Slots of KV cache for the running rows (row i of the engine's batch is slot i) and the decode step over them."""

    def __init__(self, model: Any, cuda_graphs: bool | None = None, compile: bool = False, fused: bool | None = None):
        """fused: the batch-1 step in Triton kernels (default: on CUDA with compile, where the model allows)."""
        self.model = model
        config = model.config
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.num_layers = config.num_hidden_layers
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        decoder = model.model
        self.layers = [layer_weights(layer) for layer in decoder.layers]
        first = decoder.layers[0]
        eps = first.input_layernorm.variance_epsilon
        self.shape = LayerShape(self.heads, self.kv_heads, self.head_dim, eps,
                                getattr(getattr(first.self_attn, "q_norm", None), "variance_epsilon", eps),
                                getattr(first.self_attn, "scaling", self.head_dim ** -0.5), first.mlp.act_fn)
        self.embed, self.rotary, self.norm = decoder.embed_tokens, decoder.rotary_emb, decoder.norm
        self.lm_head = model.get_output_embeddings()
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.compiled = compile
        if fused is None:
            fused = compile and self.device.type == "cuda" and fused_supported(self.shape, config) is None
        elif fused and (reason := fused_supported(self.shape, config)) is not None:
            raise ValueError(f"no Triton batch-1 step: {reason}")
        self.fused = fused
        self.speculate = self.device.type == "cuda"
        """greedy(): queue the next window of steps before the host looks at this one (the GPU runs it while the host
        reports tokens); wasted when the rows change. Off on CPU, where nothing runs behind the host's back."""
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = self.length = 0  # the cache's capacity
        self.ids = self.positions = self.rows = self.columns = torch.empty(0)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None
        self.ahead: tuple[tuple[list[int], list[int]], int, torch.Tensor] | None = None
        """The speculative window in flight: ((ids, positions) it continues from, steps, its tokens on the device)."""
        self.taken = 0
        """Speculative windows used (the rest were dropped)."""
        self._head: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._logits
        self._layer: Callable[..., tuple[torch.Tensor, torch.Tensor]] = functools.partial(decoder_layer, self.shape)
        self._down_proj: Callable[..., torch.Tensor] = down_projection
        if compile:
            self._head = torch.compile(self._logits, options=COMPILE_OPTIONS)
            self._layer = torch.compile(self._layer, options=COMPILE_OPTIONS)
            self._down_proj = torch.compile(down_projection, options=COMPILE_OPTIONS)

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
        self.ids = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.rows = torch.arange(slots, device=self.device)
        self.columns = torch.arange(length, device=self.device)
        self.slots, self.length = slots, length
        self.graphs.clear()  # they captured the old buffers' addresses
        self.pool = self.ahead = None

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
        self.ahead = None

    def keep(self, index: list[int], used: int) -> None:
        """Rows `index` go on (in that order) in slots 0..len(index)-1; `used`: positions any of them has filled."""
        if index == list(range(len(index))):
            return
        self.ahead = None
        source = torch.tensor(index, device=self.device)
        for cache in (self.keys, self.values):
            for layer in cache:
                layer[:len(index), :, :used] = layer[source, :, :used]

    # ---- the step --------------------------------------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, V] in the model's dtype, their argmax [B])."""
        logits = linear(self.norm(x), self.lm_head.weight, self.lm_head.bias)
        return logits, logits.argmax(dim=-1)

    def _body(self, batch: int, length: int) -> torch.Tensor:
        """One step of the first `batch` slots: logits, and the greedy next token/position left in ids/positions."""
        ids, positions, rows = self.ids[:batch], self.positions[:batch], self.rows[:batch]
        x = self.embed(ids)
        cos, sin = self.rotary(x[:, None], positions[:, None])  # [B, 1, D]
        if batch == 1 and self.fused:
            for weights, keys, values in zip(self.layers, self.keys, self.values):
                x = fused_decoder_layer(self.shape, x, cos, sin, rows, positions, keys, values, weights)
            logits = gemv(x, self.lm_head.weight, self.lm_head.bias, norm=self.norm.weight,
                          eps=self.norm.variance_epsilon)
            ids.copy_(logits.argmax(dim=-1))
            positions.add_(1)
            return logits
        mask = (self.columns[None, :length] <= positions[:, None])[:, None, None, :]
        if self.compiled:  # one compilation for batch 1 (matrix-vector products) and one for every other bucket
            for t in (x, cos, sin, rows, positions, mask) if batch > 1 else ():
                torch._dynamo.maybe_mark_dynamic(t, 0)
            torch._dynamo.maybe_mark_dynamic(mask, 3)
            for t in (*self.keys, *self.values):
                torch._dynamo.maybe_mark_dynamic(t, 0)
                torch._dynamo.maybe_mark_dynamic(t, 2)
        for weights, keys, values in zip(self.layers, self.keys, self.values):
            x, inner = self._layer(x, cos, sin, rows, positions, mask, keys, values, weights)
            if self.compiled and batch > 1:
                torch._dynamo.maybe_mark_dynamic(x, 0)
                torch._dynamo.maybe_mark_dynamic(inner, 0)
            x = self._down_proj(x, inner, weights.down, weights.down_bias)
        if self.compiled and batch > 1:
            torch._dynamo.maybe_mark_dynamic(x, 0)
        logits, next_ids = self._head(x)
        ids.copy_(next_ids)
        positions.add_(1)
        return logits

    def _run(self, ids: list[int], positions: list[int], steps: int) -> tuple[int, Callable[[], torch.Tensor]]:
        """Set the inputs and return (batch size run, a function doing one step and returning its logits)."""
        n = len(ids)
        self.reserve(n, max(positions) + steps)
        fixed = self.cuda_graphs or self.compiled  # shapes from a few buckets (graphs are per shape)
        batch = _bucket(n, 1) if fixed else n
        length = _bucket(max(positions) + steps, MIN_LENGTH) if fixed else max(positions) + steps
        pad = [0] * (batch - n)  # padding rows: token 0 at position 0 of slots no row runs in

        def fill() -> None:
            self.ids[:batch].copy_(torch.tensor(ids + pad))
            self.positions[:batch].copy_(torch.tensor(positions + pad))

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
            while True:
                try:
                    warm_up()  # with torch.compile: compiles (once per kind of bucket) and tunes
                    break
                except Exception:  # a model or setup that does not compile still gets CUDA graphs
                    if not self._fall_back(batch):
                        raise
            warm_up()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self._body(batch, length)
        self.pool = graph.pool()  # every graph of this cache shares the first one's memory (they never overlap)
        logger.debug("captured the decode step for batch %d, length %d", batch, length)
        return graph, logits

    def _fall_back(self, batch: int) -> bool:
        """After a failed warm-up: drop the Triton batch-1 step (for batch 1), else torch.compile. False: neither."""
        if batch == 1 and self.fused:
            logger.warning("the Triton batch-1 decode step failed; using the %s one",
                           "compiled" if self.compiled else "uncompiled", exc_info=True)
            self.fused = False
            return True
        if not self.compiled:
            return False
        logger.warning("torch.compile of the decode step failed; capturing it uncompiled", exc_info=True)
        self._head, self._down_proj = self._logits, down_projection
        self._layer = functools.partial(decoder_layer, self.shape)
        self.compiled = False
        return True

    def forward(self, ids: list[int], positions: list[int]) -> torch.Tensor:
        """Logits [n, V] (float32) of token ids[i] at positions[i] in slot i, its keys/values written to the cache."""
        self.ahead = None
        _, step = self._run(ids, positions, 1)
        return step()[:len(ids)].float()

    def _window(self, step: Callable[[], torch.Tensor], batch: int, steps: int) -> torch.Tensor:
        """Queue `steps` steps; their greedy tokens [steps, batch] on the device."""
        tokens = torch.empty(steps, batch, dtype=torch.long, device=self.device)
        for j in range(steps):
            step()
            tokens[j].copy_(self.ids[:batch])
        return tokens

    def greedy(self, ids: list[int], positions: list[int], steps: int, ahead: int = 0) -> list[list[int]]:
        """`steps` greedy tokens for every row, fed back on the device with one sync at the end: [row][step].

        ahead: when the rows will likely go on unchanged, queue that many more steps before waiting for these (the
        GPU runs them while the host reports this window); the next call takes them if it continues exactly where
        this one ends."""
        n, spec = len(ids), self.ahead
        self.ahead = None
        ahead = ahead if self.speculate else 0
        if spec is not None and spec[0] == (ids, positions) and spec[1] >= steps:
            tokens = spec[2][:steps]
            self.taken += 1
            if spec[1] > steps:
                ahead = 0  # the device state is past this window's end: the next window starts afresh
        else:
            batch, step = self._run(ids, positions, steps + ahead)
            tokens = self._window(step, batch, steps)
        batch = tokens.shape[1]
        length = max(positions) + steps + ahead
        if self.cuda_graphs or self.compiled:
            length = _bucket(length, MIN_LENGTH)
        following = None
        if ahead and (self.cuda_graphs and (batch, length) in self.graphs or  # (never a capture here)
                      not self.cuda_graphs and length <= self.length):
            host = tokens
            if self.device.type == "cuda":  # copy this window's tokens out before queueing the next one
                host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
                host.copy_(tokens, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
            if self.cuda_graphs:
                graph, logits = self.graphs[(batch, length)]

                def step() -> torch.Tensor:
                    graph.replay()
                    return logits
            else:
                def step() -> torch.Tensor:
                    return self._body(batch, length)

            following = self._window(step, batch, ahead)  # from the device's ids/positions: where this one ends
            if self.device.type == "cuda":
                done.synchronize()
            tokens = host
        out = tokens[:, :n].T.tolist()
        if following is not None:
            self.ahead = (([row[-1] for row in out], [p + steps for p in positions]), ahead, following)
        return out

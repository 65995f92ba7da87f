"""The decode step's own forward of one llama-family decoder layer (Llama, Qwen2/3, Mistral, SmolLM), one token per
row, over the model's own weights: q/k/v and gate/up fused once at load into one matrix each. Op for op what
transformers computes (its RMSNorm, rotary embedding and attention), written so inductor can fuse it (static_decode.py
compiles and captures it)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch


@dataclass(frozen=True)
class LayerShape:
    """What every layer of a model shares: head counts and size, norm epsilons, attention scaling, MLP activation."""

    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    qk_eps: float
    scaling: float
    act: Any


class LayerWeights(NamedTuple):
    """One decoder layer's weights (views of the model's parameters); None where the architecture has none."""

    input_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


@torch.no_grad()
def fuse(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight [sum of outputs, inputs] (and bias) for linears reading the same input. Their parameters become
    views of it, so the model's own forward and the step share one copy."""
    fused = torch.cat([m.weight.detach() for m in linears])
    start = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight.data = fused[start:start + rows]
        start += rows
    if all(m.bias is None for m in linears):
        return fused, None
    return fused, torch.cat([m.bias.detach() if m.bias is not None else fused.new_zeros(m.weight.shape[0])
                             for m in linears])


def layer_weights(layer: Any) -> LayerWeights:
    """The layer's weights for the step; fuses q/k/v and gate/up the first time (kept on the layer for reuse)."""
    cached = getattr(layer, "_swift_static_weights", None)
    if cached is not None:
        return cached
    attn, mlp = layer.self_attn, layer.mlp

    def get(module: Any, name: str = "weight") -> torch.Tensor | None:
        tensor = getattr(module, name, None) if module is not None else None
        return None if tensor is None else tensor.detach()

    qkv, qkv_bias = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up, gate_up_bias = fuse([mlp.gate_proj, mlp.up_proj])
    weights = LayerWeights(get(layer.input_layernorm), qkv, qkv_bias, get(getattr(attn, "q_norm", None)),
                     get(getattr(attn, "k_norm", None)), get(attn.o_proj), get(attn.o_proj, "bias"),
                     get(layer.post_attention_layernorm), gate_up, gate_up_bias, get(mlp.down_proj),
                     get(mlp.down_proj, "bias"))
    object.__setattr__(layer, "_swift_static_weights", weights)  # not a submodule or parameter
    return weights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, op for op (float32 statistics, weight applied in the input's dtype)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb for one tensor."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) as a matmul and an add: inductor decomposes a one-row matmul (not an addmm) into a
    reduction, with the add fused in."""
    y = x @ weight.T
    return y if bias is None else y + bias


def decoder_layer(shape: LayerShape, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                  positions: torch.Tensor, mask: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  w: LayerWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoder layer for one token per row, up to the MLP's down projection (`down_projection`):
    (x, act(gate) * up).
    x [B, hidden]; cos/sin [B, 1, D]; rows/positions [B];
    mask [B, 1, 1, L] (True: attend); keys/values: the whole cache [slots, KV, capacity, D], written at
    (row, position), read up to L."""
    batch, length = x.shape[0], mask.shape[-1]
    heads, kv_heads, dim = shape.heads, shape.kv_heads, shape.head_dim
    qkv = linear(rms_norm(x, w.input_norm, shape.eps), w.qkv, w.qkv_bias)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = q.view(batch, heads, dim), k.view(batch, kv_heads, dim), v.view(batch, kv_heads, dim)
    if w.q_norm is not None:
        q, k = rms_norm(q, w.q_norm, shape.qk_eps), rms_norm(k, w.k_norm, shape.qk_eps)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    keys[rows, :, positions] = k
    values[rows, :, positions] = v
    # grouped query heads read their KV head in place (no repeat_kv copy): [B, KV, groups, D] x [B, KV, D, L]
    q = q.view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, keys[:batch, :, :length].transpose(-1, -2)).float() * shape.scaling
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(v.dtype)
    attn = torch.matmul(probs, values[:batch, :, :length]).reshape(batch, heads * dim)
    x = x + linear(attn, w.o, w.o_bias)
    h = rms_norm(x, w.post_norm, shape.eps)
    if batch == 1:  # two one-row products: inductor makes one reduction of both with act(gate) * up fused in
        half, bias = w.gate_up.shape[0] // 2, w.gate_up_bias
        gate = linear(h, w.gate_up[:half], None if bias is None else bias[:half])
        up = linear(h, w.gate_up[half:], None if bias is None else bias[half:])
    else:  # one matmul of the fused weight
        gate, up = linear(h, w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
    return x, shape.act(gate) * up


def down_projection(x: torch.Tensor, inner: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """The MLP's down projection and residual, compiled as a region of its own: inside the layer's region inductor
    recomputed act(gate) * up in the down product's reduction for every block of outputs (7B shape on an H200:
    2.45 TB/s); as an input of its own region the activation is read ready-made (3.43 TB/s)."""
    return x + linear(inner, weight, bias)

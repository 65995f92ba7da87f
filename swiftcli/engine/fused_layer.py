"""The decode step's own forward of one llama-family decoder layer (Llama, Qwen2/3, Mistral, SmolLM), one token per
row, over the model's own weights: q/k/v and gate/up fused once at load into one matrix each. Op for op what
transformers computes (its RMSNorm, rotary embedding and attention), written so inductor can fuse it (static_decode.py
compiles and captures it).

For a batch of one on CUDA, `fused_decoder_layer` runs the same layer as five Triton kernels instead (static_decode.py
captures them in the batch-1 graph): a matrix-vector product with the RMSNorm of its input, the bias, the residual
add or SiLU(gate) * up in the same kernel (q/k/v; o; gate/up; down), and one decode attention kernel per (row, query
head) that applies the rotary embedding, writes the row's keys/values and reads only the positions filled so far.
On Hopper they are launched with programmatic dependent launch: each starts while the one before finishes and reads
what does not depend on it (weights, the cache) before waiting. At 1.5B size inductor's version is ~11 kernels a
layer of a few microseconds each, latency rather than bandwidth bound (README: the H200 numbers).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

logger = logging.getLogger("swiftcli")


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


# ---- batch 1 on CUDA: Triton kernels ------------------------------------------------------------------------------
tl: Any = None  # triton.language, imported by _kernels() (the kernels' annotations name it)


def _gemv_kernel(w, x, out, norm, bias, res, N, HALF, eps, K: tl.constexpr, NORM: tl.constexpr,
                 BIAS: tl.constexpr, RES: tl.constexpr, GLU: tl.constexpr, PDL: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """out[n] = w[n] . h (+ bias[n]) (+ res[n]), n < N, for one row x of K; NORM: h = norm * rms_norm(x), else x;
    GLU: out[n] = silu(w[n] . h) * (w[HALF + n] . h). Rounded to the output dtype where transformers rounds.
    PDL (programmatic dependent launch): the first block of weights is read before waiting for the kernel before."""
    dtype = out.dtype.element_ty
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = rows < N
    cols = tl.arange(0, BLOCK_K)
    offsets = rows.to(tl.int64)[:, None] * K + cols[None, :]
    first = live[:, None] & (cols[None, :] < K)
    w_first = tl.load(w + offsets, mask=first, other=0.0)
    if GLU:
        up_first = tl.load(w + offsets + HALF * K, mask=first, other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()  # x (and res) are the kernel before's output
    if NORM:
        squares = tl.zeros([BLOCK_K], tl.float32)
        for k in tl.static_range(0, K, BLOCK_K):
            h = tl.load(x + k + cols, mask=k + cols < K, other=0.0).to(tl.float32)
            squares += h * h
        scale = tl.rsqrt(tl.sum(squares, 0) / K + eps)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k in tl.static_range(0, K, BLOCK_K):
        in_k = k + cols < K
        h = tl.load(x + k + cols, mask=in_k, other=0.0)
        if NORM:
            h = tl.load(norm + k + cols, mask=in_k, other=0.0) * (h.to(tl.float32) * scale).to(dtype)
        h = h.to(tl.float32)[None, :]
        mask = live[:, None] & in_k[None, :]
        if k == 0:
            acc += w_first.to(tl.float32) * h
            if GLU:
                acc_up += up_first.to(tl.float32) * h
        else:
            acc += tl.load(w + offsets + k, mask=mask, other=0.0).to(tl.float32) * h
            if GLU:
                acc_up += tl.load(w + offsets + (HALF * K + k), mask=mask, other=0.0).to(tl.float32) * h
    y = tl.sum(acc, 1)
    if BIAS:  # added before rounding, as nn.Linear's addmm does
        y += tl.load(bias + rows, mask=live, other=0.0).to(tl.float32)
    y = y.to(dtype)
    if GLU:
        up = tl.sum(acc_up, 1)
        if BIAS:
            up += tl.load(bias + HALF + rows, mask=live, other=0.0).to(tl.float32)
        up = up.to(dtype)
        gate = y.to(tl.float32)
        y = (gate / (1.0 + tl.exp(-gate))).to(dtype) * up
    if RES:
        y = tl.load(res + rows, mask=live, other=0.0) + y
    tl.store(out + rows, y, mask=live)


def _attention_kernel(qkv, cos, sin, positions, rows, keys, values, q_norm, k_norm, out, slot_stride, head_stride,
                      position_stride, scaling, eps, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr,
                      QK_NORM: tl.constexpr, PDL: tl.constexpr, BLOCK_L: tl.constexpr):
    """Query head `program_id(1)` of row `program_id(0)` (qkv [B, (HEADS + 2 KV_HEADS) D]; cos/sin [B, D]):
    (q/k RMSNorm,) rotary, the row's k/v written at its position by its group's first head, then softmax(q K^T *
    scaling) V over the positions before it (the cache) and its own (k/v from registers): the filled part only.
    The cache is read a block ahead (the first block before waiting for q/k/v under PDL)."""
    dtype = out.dtype.element_ty
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    b, head = tl.program_id(0), tl.program_id(1)
    group = head // (HEADS // KV_HEADS)
    d = tl.arange(0, D)
    other = (d + D // 2) % D  # rotate_half(t)[d] = -t[d + D/2] for d < D/2, t[d - D/2] after
    position, slot = tl.load(positions + b).to(tl.int32), tl.load(rows + b)
    c, s = tl.load(cos + b * D + d), tl.load(sin + b * D + d)
    cache = slot.to(tl.int64) * slot_stride + group * head_stride
    p = tl.arange(0, BLOCK_L)
    at = cache + p[:, None] * position_stride + d[None, :]
    key_block = tl.load(keys + at, mask=(p < position)[:, None], other=0.0)
    value_block = tl.load(values + at, mask=(p < position)[:, None], other=0.0)
    if PDL:
        tl.extra.cuda.gdc_wait()  # q/k/v are the kernel before's output
    base = qkv + b * (HEADS + 2 * KV_HEADS) * D
    q, q_other = tl.load(base + head * D + d), tl.load(base + head * D + other)
    k, k_other = tl.load(base + (HEADS + group) * D + d), tl.load(base + (HEADS + group) * D + other)
    v = tl.load(base + (HEADS + KV_HEADS + group) * D + d)
    if QK_NORM:
        q_scale = tl.rsqrt(tl.sum(q.to(tl.float32) * q.to(tl.float32), 0) / D + eps)
        k_scale = tl.rsqrt(tl.sum(k.to(tl.float32) * k.to(tl.float32), 0) / D + eps)
        q_other = tl.load(q_norm + other) * (q_other.to(tl.float32) * q_scale).to(dtype)
        q = tl.load(q_norm + d) * (q.to(tl.float32) * q_scale).to(dtype)
        k_other = tl.load(k_norm + other) * (k_other.to(tl.float32) * k_scale).to(dtype)
        k = tl.load(k_norm + d) * (k.to(tl.float32) * k_scale).to(dtype)
    q = q * c + tl.where(d < D // 2, -q_other, q_other) * s
    k = k * c + tl.where(d < D // 2, -k_other, k_other) * s
    if head % (HEADS // KV_HEADS) == 0:
        tl.store(keys + cache + position * position_stride + d, k)
        tl.store(values + cache + position * position_stride + d, v)
    q = q.to(tl.float32)
    top = tl.sum(q * k.to(tl.float32), 0).to(dtype).to(tl.float32) * scaling  # scores round as transformers'
    total = top * 0.0 + 1.0
    acc = v.to(tl.float32)
    for start in range(0, position, BLOCK_L):
        filled = start + p < position
        ahead = start + BLOCK_L + p
        at = cache + ahead[:, None] * position_stride + d[None, :]
        next_keys = tl.load(keys + at, mask=(ahead < position)[:, None], other=0.0)
        next_values = tl.load(values + at, mask=(ahead < position)[:, None], other=0.0)
        score = tl.sum(key_block.to(tl.float32) * q[None, :], 1)
        score = tl.where(filled, score.to(dtype).to(tl.float32) * scaling, float("-inf"))
        new_top = tl.maximum(top, tl.max(score, 0))
        weight = tl.exp(score - new_top)
        old = tl.exp(top - new_top)
        total = total * old + tl.sum(weight, 0)
        acc = acc * old + tl.sum(weight[:, None] * value_block.to(tl.float32), 0)
        top = new_top
        key_block, value_block = next_keys, next_values
    tl.store(out + (b * HEADS + head) * D + d, (acc / total).to(dtype))


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """The Triton kernels (JIT-compiled on first launch; TRITON_INTERPRET=1 runs them on CPU)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    if PDL:
        import triton.language.extra.cuda  # noqa: F401  (gdc_wait, gdc_launch_dependents)
    return triton.jit(_gemv_kernel), triton.jit(_attention_kernel)


PDL = True
"""Launch the kernels with programmatic dependent launch (Hopper and newer): each starts while the one before it
finishes and reads what does not depend on it (weights, the cache) before waiting. Turned off if it fails."""


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    global PDL
    if PDL and args[0].is_cuda and torch.cuda.get_device_capability(args[0].device)[0] >= 9:
        try:
            kernel[grid](*args, PDL=True, launch_pdl=True, **meta)
            return
        except Exception:  # noqa: BLE001  (an older Triton, a driver without it)
            logger.warning("programmatic dependent launch failed; launching plainly", exc_info=True)
            PDL = False
    kernel[grid](*args, PDL=False, **meta)


GEMV_BLOCKS: dict[tuple[int, int], tuple[int, int, int]] = {
    # Qwen2.5-1.5B shape: q/k/v, o, gate/up (N: outputs of each half), down, a 49k lm_head
    (2048, 1536): (4, 1024, 4), (1536, 1536): (2, 2048, 4), (8960, 1536): (2, 2048, 4), (1536, 8960): (2, 2048, 4),
    (49152, 1536): (8, 256, 4),
    # Qwen2.5-7B shape
    (4608, 3584): (4, 256, 4), (3584, 3584): (2, 2048, 4), (18944, 3584): (16, 256, 4), (3584, 18944): (2, 2048, 4),
    (49152, 3584): (4, 1024, 4),
}
"""(N, K) -> (BLOCK_N, BLOCK_K, num_warps) of a matrix-vector product: the fastest of `bench_gpu.py --kernels`'s
sweep on an H200 (2026-11-29, with PDL); `gemv_blocks` picks for other shapes."""


def gemv_blocks(n: int, k: int) -> tuple[int, int, int]:
    """Rows per program, columns per step, warps: few rows and long steps (the H200's best for most shapes above),
    more rows per program for very many outputs."""
    if (n, k) in GEMV_BLOCKS:
        return GEMV_BLOCKS[(n, k)]
    return (16, 256, 4) if n >= 16384 else (2, 2048, 4)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, norm: torch.Tensor | None = None,
         eps: float = 0.0, residual: torch.Tensor | None = None, glu: bool = False) -> torch.Tensor:
    """x [1, K] -> [1, N]: linear(norm * rms_norm(x) if norm is given else x, weight, bias) (+ residual); glu: the
    weight is gate and up stacked, and the result silu(gate) * up [1, N/2]. One kernel."""
    kernel, _ = _kernels()
    n, k = weight.shape
    n = n // 2 if glu else n
    out = x.new_empty(1, n)
    block_n, block_k, warps = gemv_blocks(n, k)
    _launch(kernel, (-(-n // block_n),), weight, x, out, norm if norm is not None else x,
            bias if bias is not None else x, residual if residual is not None else x, n, n, eps, K=k,
            NORM=norm is not None, BIAS=bias is not None, RES=residual is not None, GLU=glu, BLOCK_N=block_n,
            BLOCK_K=min(block_k, _pow2(k)), num_warps=warps)
    return out


def _pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


ATTENTION_BLOCK = (64, 4)
"""(positions per step, warps) of the decode attention kernel (`bench_gpu.py --kernels`: the best at 30 and 200
positions filled but one)."""


def decode_attention(shape: LayerShape, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                     positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, q_norm: torch.Tensor | None,
                     k_norm: torch.Tensor | None) -> torch.Tensor:
    """qkv [B, (heads + 2 kv_heads) D] -> attention output [B, heads D]; writes the rows' k/v at their positions."""
    _, kernel = _kernels()
    batch = qkv.shape[0]
    out = qkv.new_empty(batch, shape.heads * shape.head_dim)
    block, warps = ATTENTION_BLOCK
    _launch(kernel, (batch, shape.heads), qkv, cos, sin, positions, rows, keys, values,
            q_norm if q_norm is not None else qkv, k_norm if k_norm is not None else qkv, out, keys.stride(0),
            keys.stride(1), keys.stride(2), shape.scaling, shape.qk_eps, HEADS=shape.heads, KV_HEADS=shape.kv_heads,
            D=shape.head_dim, QK_NORM=q_norm is not None, BLOCK_L=block, num_warps=warps)
    return out


def fused_supported(shape: LayerShape, config: Any) -> str | None:
    """Why `fused_decoder_layer` can't run this model (None when it can)."""
    if getattr(config, "hidden_act", None) not in ("silu", "swish"):
        return f"activation {getattr(config, 'hidden_act', None)}"
    if shape.head_dim & (shape.head_dim - 1):
        return f"head_dim {shape.head_dim} is not a power of two"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "no triton"
    return None


def fused_decoder_layer(shape: LayerShape, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                        positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                        w: LayerWeights) -> torch.Tensor:
    """`decoder_layer` + `down_projection` for one row (x [1, hidden]) in five kernels; cos/sin [1, 1, D]."""
    qkv = gemv(x, w.qkv, w.qkv_bias, norm=w.input_norm, eps=shape.eps)
    attn = decode_attention(shape, qkv, cos, sin, rows, positions, keys, values, w.q_norm, w.k_norm)
    x = gemv(attn, w.o, w.o_bias, residual=x)
    inner = gemv(x, w.gate_up, w.gate_up_bias, norm=w.post_norm, eps=shape.eps, glu=True)
    return gemv(inner, w.down, w.down_bias, residual=x)

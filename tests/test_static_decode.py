"""The static-KV-cache decode step (static_decode.py) on CPU: our own llama-family layer against transformers' forward.

On GPU the same step is compiled and replayed from CUDA graphs (scripts/bench_gpu.py checks it there); here it runs
eagerly, so these tests check its arithmetic, the fused weights and the speculative windows, token for token.
"""
from __future__ import annotations

import pytest
import torch

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
ARCHS = {  # model type -> (config class name, extra config): each variant the step handles differently
    "llama": ("LlamaConfig", dict(attention_bias=True, mlp_bias=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "qwen2": ("Qwen2Config", {}),  # q/k/v bias, no o bias
    "qwen3": ("Qwen3Config", dict(head_dim=32)),  # per-head q/k RMSNorm, head_dim != hidden / heads
    "mistral": ("MistralConfig", dict(sliding_window=None, head_dim=16)),
}


def tiny_model(model_type: str, seed: int = 0):
    import transformers
    from transformers import AutoModelForCausalLM

    name, extra = ARCHS[model_type]
    config = getattr(transformers, name)(**TINY, **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():  # biases and norm weights start at 0 / 1: make them matter
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias") or "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


@torch.inference_mode()
def reference_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy tokens from full forwards without any cache."""
    ids, out = list(ids), []
    for _ in range(steps):
        out.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        ids.append(out[-1])
    return out


@torch.inference_mode()
def prefill(model, decoder, prompts: list[list[int]], start: int = 0) -> list[int]:
    """Left-padded prefill as the engine does it, loaded into slots start..; returns each row's first greedy token."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    decoder.load(start, out.past_key_values, [len(p) for p in prompts])
    return out.logits[:, -1].argmax(-1).tolist()


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_step_logits_equal_the_models_own_forward(model_type):
    from swiftcli.engine.static_decode import StaticDecoder, unsupported_reason

    model = tiny_model(model_type)
    assert unsupported_reason(model) is None
    prompts = [[5, 17, 3, 9, 44, 2, 61], [7, 8]]
    decoder = StaticDecoder(model)
    first = prefill(model, decoder, prompts)
    with torch.inference_mode():
        logits = decoder.forward(first, [len(p) for p in prompts])
        for prompt, token, row in zip(prompts, first, logits):
            want = model(input_ids=torch.tensor([prompt + [token]])).logits[0, -1]
            torch.testing.assert_close(row, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_greedy_windows_equal_a_cache_free_loop(model_type):
    from swiftcli.engine.static_decode import StaticDecoder

    model = tiny_model(model_type, seed=1)
    prompts = [[11, 12, 13, 14, 15, 16], [40, 2, 77]]
    decoder = StaticDecoder(model)
    first = prefill(model, decoder, prompts)
    with torch.inference_mode():
        got = decoder.greedy(first, [len(p) for p in prompts], 12)
    for prompt, token, tokens in zip(prompts, first, got):
        assert [token] + tokens == reference_greedy(model, prompt, 13)


def test_fused_weights_share_the_models_parameters():
    """q/k/v and gate/up become one matrix each, built once: the model's parameters are views of it (no second copy),
    its own forward is unchanged, and a second decoder on the same model reuses the fused matrices."""
    from swiftcli.engine.static_decode import StaticDecoder

    model = tiny_model("qwen2")
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
    bytes_before = sum(p.untyped_storage().nbytes() for p in {p.untyped_storage().data_ptr(): p
                                                               for p in model.parameters()}.values())
    decoder = StaticDecoder(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    qkv, gate_up = decoder.layers[0].qkv, decoder.layers[0].gate_up
    assert qkv.shape == (attn.q_proj.out_features + 2 * attn.k_proj.out_features, attn.q_proj.in_features)
    for linear, fused in ((attn.q_proj, qkv), (attn.v_proj, qkv), (mlp.up_proj, gate_up)):
        assert linear.weight.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    torch.testing.assert_close(decoder.layers[0].qkv_bias, torch.cat([attn.q_proj.bias, attn.k_proj.bias,
                                                                      attn.v_proj.bias]))
    bytes_after = sum(p.untyped_storage().nbytes() for p in {p.untyped_storage().data_ptr(): p
                                                              for p in model.parameters()}.values())
    assert bytes_after == bytes_before
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    assert StaticDecoder(model).layers[0].qkv is qkv


def test_speculative_window_is_taken_when_rows_go_on_and_dropped_when_they_change():
    """greedy(..., ahead=k) queues k more steps; the next call uses them only if it continues exactly there."""
    from swiftcli.engine.static_decode import StaticDecoder

    model = tiny_model("llama", seed=2)
    prompts = [[21, 22, 23, 24], [30, 31, 32, 33, 34, 35, 36]]
    want = [reference_greedy(model, p, 25) for p in prompts]
    decoder = StaticDecoder(model)
    decoder.speculate = True  # what CUDA does; here the queued steps simply run first
    tokens = [[t] for t in prefill(model, decoder, prompts)]
    with torch.inference_mode():
        for steps in (8, 8, 4):  # the third continues where the second's speculation ends, with fewer steps
            got = decoder.greedy([t[-1] for t in tokens], [len(p) + len(t) for p, t in zip(prompts, tokens)],
                                 steps, ahead=8)
            for row, new in zip(tokens, got):
                row += new
        assert decoder.taken == 2
        assert tokens == [w[:21] for w in want]
        # row 1 leaves: the window queued for both rows is dropped, and row 0 goes on from its own state
        decoder.keep([0], len(prompts[0]) + len(tokens[0]))
        got = decoder.greedy([tokens[0][-1]], [len(prompts[0]) + len(tokens[0])], 4)
        assert decoder.taken == 2
    assert tokens[0] + got[0] == want[0][:25]


def test_banner_says_what_decodes(model_dir):
    """The engine's banner facts name the decode path: eager on CPU by default; the static cache when asked, and
    uncompiled there (torch.compile defaults to on only on CUDA)."""
    from transformers import AutoTokenizer

    from swiftcli.engine.base import EngineInfo
    from swiftcli.engine.pt_engine import PtEngine
    from swiftcli.protocol import RequestConfig
    from swiftcli.template import get_template

    model, tokenizer = tiny_model("qwen2"), AutoTokenizer.from_pretrained(model_dir)
    template = get_template("chatml", tokenizer)

    def engine(**kwargs) -> PtEngine:
        return PtEngine(model, template, EngineInfo("qwen2", "", "pt", "float32", 512), RequestConfig(), **kwargs)

    assert engine().info.details["decode"] == "eager"
    static = engine(static_decode=True)
    assert static.info.details["decode"] == "static KV cache" and not static.static.compiled
    assert engine(static_decode=True, compile=True).info.details["decode"] == "static KV cache, torch.compile"



def check_triton_batch1_step(model_type: str) -> None:
    """fused_decoder_layer (gemv with norm/bias/residual/SiLU fused, decode attention writing the cache and reading
    the filled positions) gives the model's own logits, and greedy windows give a cache-free loop's tokens. Small
    blocks, so that every loop takes several steps and the last block of rows/columns/positions is partly masked."""
    from swiftcli.engine import fused_layer
    from swiftcli.engine.static_decode import StaticDecoder

    fused_layer.gemv_blocks = lambda n, k: (64, 32 if k == 64 else 64, 4)
    fused_layer.ATTENTION_BLOCK = (4, 4)
    model = tiny_model(model_type, seed=3)
    prompt = [5, 17, 3, 9, 44, 2, 61, 8, 70, 12]
    decoder = StaticDecoder(model, fused=True)
    assert decoder.fused
    first = prefill(model, decoder, [prompt])[0]
    with torch.inference_mode():
        logits = decoder.forward([first], [len(prompt)])
        want = model(input_ids=torch.tensor([prompt + [first]])).logits[0, -1]
        torch.testing.assert_close(logits[0], want, rtol=1e-4, atol=1e-4)
        second = int(logits[0].argmax())
        got = decoder.greedy([second], [len(prompt) + 1], 6)[0]
    assert [first, second] + got == reference_greedy(model, prompt, 8)


def test_triton_batch1_step_equals_the_models_forward():
    """check_triton_batch1_step for every architecture, the kernels run by Triton's interpreter (numpy, on CPU) in a
    process of its own: TRITON_INTERPRET must be set before triton is first imported."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'tests'); import test_static_decode as t\n"
            f"for arch in {list(ARCHS)!r}: t.check_triton_batch1_step(arch); print(arch, 'ok')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]

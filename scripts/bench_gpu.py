"""GPU proof of the pt engine at a real model size: batch-1 decode tok/s and MBU, batch-32 throughput vs HF generate.

    python scripts/bench_gpu.py --tokenizer_dir <dir with tokenizer.json> [--config qwen2.5-1.5b]

The model is built from a config with random bf16 weights (speed does not depend on the values). Its vocabulary is
the tokenizer's, so generated ids always decode. MBU = bytes read per decode step (weights + KV cache) x steps/s
divided by the card's measured device-to-device copy bandwidth. Writes benchmarks/results/bench_gpu-<time>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

CONFIGS = {  # Qwen2.5 shapes (vocabulary replaced by the tokenizer's)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
}


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * reps / (time.perf_counter() - start)


def build(config_name: str, tokenizer_dir: str):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from swiftcli.engine.base import EngineInfo
    from swiftcli.engine.pt_engine import PtEngine
    from swiftcli.protocol import RequestConfig
    from swiftcli.template import get_template

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, **CONFIGS[config_name])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16).eval()
    template = get_template("chatml", tokenizer)
    info = EngineInfo(config_name, "", "pt", "bfloat16", 4096)
    return model, tokenizer, PtEngine(model, template, info, RequestConfig(temperature=0), max_batch_size=64)


def run_engine(engine, batch: int, new_tokens: int) -> float:
    from swiftcli.protocol import InferRequest, RequestConfig

    requests = [InferRequest(messages=[{"role": "user", "content": f"Tell me about topic {i}."}]) for i in range(batch)]
    config = RequestConfig(max_tokens=new_tokens, temperature=0, ignore_eos=True)

    async def go() -> int:
        responses = await asyncio.gather(*[engine.infer_async(r, config) for r in requests])
        return sum(r.usage.completion_tokens for r in responses)

    asyncio.run(go())  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = asyncio.run(go())
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def run_hf(model, tokenizer, batch: int, new_tokens: int) -> float:
    prompts = [f"Tell me about topic {i}." for i in range(batch)]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to("cuda")
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              pad_token_id=tokenizer.pad_token_id or 0)
    model.generate(**enc, **kw)
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, **kw)
    torch.cuda.synchronize()
    return batch * new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer_dir", required=True)
    parser.add_argument("--config", default="qwen2.5-1.5b", choices=CONFIGS)
    parser.add_argument("--new_tokens", type=int, default=128)
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    model, tokenizer, engine = build(args.config, args.tokenizer_dir)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    b1 = run_engine(engine, 1, args.new_tokens)
    avg_context = 30 + args.new_tokens / 2
    mbu = (weight_bytes + kv_per_token * avg_context) * b1 / bandwidth
    b32 = run_engine(engine, 32, args.new_tokens)
    hf1 = run_hf(model, tokenizer, 1, args.new_tokens)
    hf32 = run_hf(model, tokenizer, 32, args.new_tokens)
    result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "config": args.config,
              "weights_gb": weight_bytes / 1e9, "copy_bandwidth_tb_s": bandwidth / 1e12,
              "pt_batch1_tok_s": b1, "pt_batch1_mbu": mbu, "hf_batch1_tok_s": hf1,
              "pt_batch32_tok_s": b32, "hf_batch32_tok_s": hf32, "pt_vs_hf_batch32": b32 / hf32}
    print(f"{result['card']}, {args.config} (random bf16, {result['weights_gb']:.2f} GB), "
          f"copy bandwidth {result['copy_bandwidth_tb_s']:.2f} TB/s")
    print(f"{'':<10}{'pt engine':>12}{'HF generate':>14}")
    print(f"{'batch 1':<10}{b1:>12.1f}{hf1:>14.1f}   tok/s; pt MBU {mbu:.1%}")
    print(f"{'batch 32':<10}{b32:>12.1f}{hf32:>14.1f}   tok/s; pt/HF {b32 / hf32:.2f}x")
    os.makedirs("benchmarks/results", exist_ok=True)
    path = f"benchmarks/results/bench_gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench_gpu.json"), "w") as f:
            json.dump(result, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

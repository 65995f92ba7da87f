"""pt inference split over GPUs (`--tensor_parallel_size N`) against one GPU: batch-1 and batch-32 decode tok/s.

    python scripts/bench_tp.py --model_dir <checkpoint> [--sizes 1,2] [--dtype bf16] [--new_tokens 128]

Each setting runs in its own process through the Python API (`get_engine`, as `swift infer` builds it; with N > 1
rank 0 starts the other ranks itself). Settings: `tp1` (one GPU, the default static-cache decode step), `tp1-eager`
(one GPU, `--enforce_eager true`: the eager loop tensor parallel runs, so the like-for-like row) and `tpN` for each
size above 1. Batch 1: one greedy request of `--new_tokens` tokens (eos ignored); batch 32: 32 concurrent ones.
Every setting also records the greedy tokens of one prompt; the table says how many of them match tp1-eager's
(in bf16 different sum orders can tip a random model's near-ties; `gpu_proofs_sharded.sh` checks equality in fp32).
Writes benchmarks/results/bench_tp-<time>.json under the current directory (and $OUT/bench_tp.json where OUT is set,
as on the GPU machine); exits 1 when every setting failed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

from bench_results import write_results  # scripts/ is sys.path[0]

PROMPT = "Tell story number 7 in 20 sentences."


def run_worker(args: argparse.Namespace) -> dict:
    """One setting: build the engine, warm each batch shape up once, then time it."""
    from swiftcli.arguments import InferArguments
    from swiftcli.engine import get_engine
    from swiftcli.protocol import InferRequest, RequestConfig

    size = 1 if args.worker.startswith("tp1") else int(args.worker[2:])
    eager = True if size > 1 or args.worker == "tp1-eager" else None
    start = time.perf_counter()
    engine = get_engine(InferArguments(model_id_or_path=args.model_dir, infer_backend="pt", dtype=args.dtype,
                                       tensor_parallel_size=size, enforce_eager=eager, max_batch_size=32))
    load_s = time.perf_counter() - start
    config = RequestConfig(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    requests = [InferRequest(messages=[{"role": "user", "content": f"{PROMPT} Variant {i}."}]) for i in range(32)]

    def timed(batch: list[InferRequest]) -> tuple[float, list]:
        async def all_of() -> list:
            return await asyncio.gather(*[engine.infer_async(r, config) for r in batch])

        t0 = time.perf_counter()
        responses = asyncio.run(all_of())
        return time.perf_counter() - t0, responses

    result = {"setting": args.worker, "tensor_parallel_size": size, "load_s": load_s}
    for batch in (1, 32):
        timed(requests[:batch])  # warm-up: compiles/captures this batch shape where the engine does
        seconds, responses = timed(requests[:batch])
        tokens = sum(r.usage.completion_tokens for r in responses)
        result[f"b{batch}_tok_per_s"] = tokens / seconds
    greedy = engine.infer([InferRequest(messages=[{"role": "user", "content": PROMPT}])],
                          RequestConfig(max_tokens=32, temperature=0))[0]
    result["greedy_text"] = greedy.choices[0].text
    import torch

    if torch.cuda.is_available():
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a transformers checkpoint directory")
    parser.add_argument("--sizes", default="1,2", help="tensor-parallel sizes (default 1,2); 1 runs tp1 and tp1-eager")
    parser.add_argument("--dtype", default="bf16", help="AUTO, bf16, fp16 or fp32 (default bf16)")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens a request, eos ignored (default 128)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_worker(args)
        print("RESULT " + json.dumps(result), flush=True)
        os._exit(0)  # rank 0's exit hook stops the followers; skip interpreter teardown of CUDA/NCCL state
    settings = [s for n in args.sizes.split(",") for s in (("tp1", "tp1-eager") if n == "1" else (f"tp{n}",))]
    results = []
    for setting in settings:
        cmd = [sys.executable, __file__, "--worker", setting, "--model_dir", args.model_dir, "--dtype", args.dtype,
               "--new_tokens", str(args.new_tokens)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "SWIFT_LOG_LEVEL": "WARNING"})
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(f"{setting}: failed (exit {out.returncode})", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(results[-1]), flush=True)
    if not results:
        sys.exit("bench_tp: every setting failed (see above); nothing written")
    reference = next((r["greedy_text"] for r in results if r["setting"] == "tp1-eager"), None)
    eager_b1 = next((r["b1_tok_per_s"] for r in results if r["setting"] == "tp1-eager"), None)
    print(f"\n{args.model_dir}, {args.dtype}, {args.new_tokens} new tokens a request")
    print(f"{'setting':<11}{'load s':>8}{'b1 tok/s':>10}{'b32 tok/s':>11}{'b1 x eager':>12}{'GiB/GPU':>9}  greedy")
    for r in results:
        same = "-" if reference is None else "same" if r["greedy_text"] == reference else "differs"
        ratio = f"{r['b1_tok_per_s'] / eager_b1:.2f}" if eager_b1 else "-"
        print(f"{r['setting']:<11}{r['load_s']:>8.1f}{r['b1_tok_per_s']:>10.1f}{r['b32_tok_per_s']:>11.1f}"
              f"{ratio:>12}{r.get('peak_gpu_memory_gib', 0):>9.1f}  {same}")
    write_results("bench_tp", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()

"""The pt engine's eager decode step with transformers' DynamicCache (a torch.cat of the whole cache every step)
against its preallocating cache layers (pt_batch.new_cache), on the default model: both caches prefilled with the same
random prompts, then decoded step by step in alternation in one process (so the machine's drift hits both alike);
the median step time of each.

    python scripts/bench_kv_cache.py                       # 16 rows, prompts of 64 / 512 / 1024 tokens, bf16: ~1 min
    python scripts/bench_kv_cache.py --rows 4 --prompt_len 2048 --dtype float32

Writes benchmarks/results/bench_kv_cache-<time>.json.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from bench_results import write_results  # scripts/ is sys.path[0]
from swiftcli.engine.pt_batch import new_cache
from swiftcli.model import embedded_model_dir


WARM_UP = 4
"""Steps of each cache not counted (the first steps allocate)."""


def step_times(model, rows: int, prompt_len: int, steps: int) -> dict[str, float]:
    """Median ms of a decode step for each cache, the two alternating step by step (the first WARM_UP not counted)."""
    ids = torch.randint(100, 40000, (rows, prompt_len + steps))
    state = {}
    for name, cache in (("DynamicCache", DynamicCache(config=model.config)), ("preallocated", new_cache(model.config))):
        mask = torch.ones(rows, prompt_len, dtype=torch.long)
        out = model(input_ids=ids[:, :prompt_len], attention_mask=mask, past_key_values=cache, logits_to_keep=1)
        state[name] = (out.past_key_values, mask, [])
    for i in range(steps):
        for name in sorted(state, reverse=bool(i % 2)):
            cache, mask, times = state[name]
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            start = time.perf_counter()
            model(input_ids=ids[:, prompt_len + i:prompt_len + i + 1], attention_mask=mask,
                  position_ids=torch.full((rows, 1), prompt_len + i), past_key_values=cache, logits_to_keep=1)
            times.append(time.perf_counter() - start)
            state[name] = (cache, mask, times)
    return {name: statistics.median(times[WARM_UP:]) * 1000 for name, (_, _, times) in state.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt_len", type=int, nargs="+", default=[64, 512, 1024])
    parser.add_argument("--steps", type=int, default=32,
                        help=f"decode steps of each cache; the first {WARM_UP} are not counted")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    if args.steps <= WARM_UP:
        parser.error(f"--steps must be more than {WARM_UP} (the warm-up steps not counted), got {args.steps}")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=getattr(torch, args.dtype)).eval()
    results = []
    print(f"{'rows':>5}{'prompt':>8}{'DynamicCache ms':>17}{'preallocated ms':>17}{'speed-up':>10}")
    with torch.inference_mode():
        for prompt_len in args.prompt_len:
            ms = step_times(model, args.rows, prompt_len, args.steps)
            speedup = ms["DynamicCache"] / ms["preallocated"]
            results.append({"rows": args.rows, "prompt_len": prompt_len, "step_ms": ms, "speedup": speedup})
            print(f"{args.rows:>5}{prompt_len:>8}{ms['DynamicCache']:>17.1f}{ms['preallocated']:>17.1f}"
                  f"{speedup:>10.3f}", flush=True)
    write_results("bench_kv_cache", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()

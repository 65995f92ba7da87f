"""Peak memory of `swift export --merge_lora true` relative to the size of the weights (goal: <= 1.5x).

Each case runs in a fresh process: it imports everything first and takes that RSS as the baseline, then merges and
reads the process's peak RSS (VmHWM: unlike ru_maxrss it starts afresh at exec, not at the parent's size). The ratio is (peak - baseline) / bytes of the weights in the export dtype,
so the ~0.5 GB that Python, torch, transformers and peft occupy before any weight is loaded does not count.

    python scripts/bench_merge.py            # a LoRA on the default model, merged in bf16 (its own dtype) and fp32
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, sys, time
import psutil, torch, transformers, peft, safetensors
from swiftcli.arguments import ExportArguments
from swiftcli.export import merge_lora
from swiftcli.export.output import progress_steps
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
out = merge_lora(ExportArguments(ckpt_dir=sys.argv[1], merge_lora=True, dtype=sys.argv[2], output_dir=sys.argv[3]))
seconds = time.perf_counter() - start
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
weights = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
print(json.dumps({"baseline": baseline, "peak": peak, "weights": weights, "seconds": seconds}))
"""


def run_case(lora_dir: str, dtype: str, work: str) -> dict:
    out = os.path.join(work, f"merged-{dtype}")
    proc = subprocess.run([sys.executable, "-c", CHILD, lora_dir, dtype, out], capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["ratio"] = (result["peak"] - result["baseline"]) / result["weights"]
    return {"dtype": dtype, **result}


def main() -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from conftest import make_lora

    from swiftcli.model import embedded_model_dir

    rows = []
    with tempfile.TemporaryDirectory() as work:
        lora = make_lora(embedded_model_dir(), os.path.join(work, "lora"))
        for dtype in ("bf16", "fp32"):
            rows.append(run_case(lora, dtype, work))
    mib = 2 ** 20
    print(f"{'dtype':<6} {'weights MiB':>12} {'baseline MiB':>13} {'peak MiB':>9} {'peak-baseline':>14} "
          f"{'ratio':>6} {'seconds':>8}")
    for r in rows:
        print(f"{r['dtype']:<6} {r['weights'] / mib:>12.0f} {r['baseline'] / mib:>13.0f} {r['peak'] / mib:>9.0f} "
              f"{(r['peak'] - r['baseline']) / mib:>14.0f} {r['ratio']:>6.2f} {r['seconds']:>8.1f}")
    results_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "results")
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, "merge_peak_rss.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "model": "smollm2-135m-instruct", "goal_ratio": 1.5,
                   "cases": rows}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

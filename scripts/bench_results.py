"""Where the benchmark scripts write their results: benchmarks/results/<name>-<time>.json, with the machine."""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
"""The repository's benchmarks/results/, wherever the script is run from."""


def write_results(name: str, payload: dict[str, Any]) -> str:
    """Also to $OUT/<name>.json when OUT is set (the GPU machine hands back what is written there)."""
    payload = {**payload, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    for target in [path] + ([os.path.join(os.environ["OUT"], f"{name}.json")] if os.environ.get("OUT") else []):
        with open(target, "w") as f:
            json.dump(payload, f, indent=2)
    print(f"wrote {path}")
    return path

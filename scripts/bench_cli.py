"""CPU time of `swift --help` and `swift <cmd> --help`: how long the command line takes before any work starts.

    python scripts/bench_cli.py [--runs 10] [--ref /path/to/other/checkout]

Each case runs `python -m swiftcli ... --help` in a fresh process `--runs` times; the table shows the median CPU time
(user + system, from the child's rusage) and wall time. `--ref` measures another checkout of swiftcli side by side
(its directory goes first on PYTHONPATH), e.g. a `git worktree` of main, for a before/after ratio in one run.
Writes benchmarks/results/bench_cli-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

CASES = [["--help"], ["infer", "--help"], ["deploy", "--help"], ["export", "--help"], ["app-ui", "--help"],
         ["sft", "--help"]]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_once(argv: list[str], checkout: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `python -m swiftcli <argv>`."""
    env = {**os.environ, "PYTHONPATH": checkout + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "swiftcli", *argv], env=env, cwd=checkout, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def flag_count(argv: list[str], checkout: str) -> int:
    """How many flags the command's --help lists (its own --help and --config included), in either help layout
    (typer's rich boxes or click's plain text)."""
    env = {**os.environ, "PYTHONPATH": checkout, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "swiftcli", *argv], env=env, cwd=checkout, capture_output=True,
                         text=True, check=True).stdout
    return len(re.findall(r"^(?:│ |  )--[a-z_]+", out, re.MULTILINE))  # option lines, not wrapped help text


def measure(checkout: str, runs: int) -> dict[str, dict[str, float]]:
    results = {}
    for argv in CASES:
        run_once(argv, checkout)  # warm the file cache
        samples = [run_once(argv, checkout) for _ in range(runs)]
        results[" ".join(argv)] = {"cpu_s": round(statistics.median(s[0] for s in samples), 3),
                                   "wall_s": round(statistics.median(s[1] for s in samples), 3),
                                   "flags": flag_count(argv, checkout) if argv != ["--help"] else None}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ref", help="another swiftcli checkout to measure beside this one")
    args = parser.parse_args()
    checkouts = {"this": ROOT, **({"ref": os.path.abspath(args.ref)} if args.ref else {})}
    results = {label: measure(path, args.runs) for label, path in checkouts.items()}
    print(f"{'command':<16}" + "".join(f"{label + ' cpu s':>14}{label + ' wall s':>14}{label + ' flags':>12}"
                                      for label in results))
    for case in results["this"]:
        print(f"{'swift ' + case:<16}" + "".join(
            f"{r[case]['cpu_s']:>14.3f}{r[case]['wall_s']:>14.3f}{r[case]['flags'] or '':>12}"
            for r in results.values()))
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"bench_cli-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"runs": args.runs, "python": sys.version.split()[0], "results": results}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Serving benchmark, side by side in one run: vLLM's own OpenAI server, `swift deploy --infer_backend vllm`,
`swift deploy --infer_backend pt` and (optionally) ms-swift's own `swift deploy --infer_backend transformers`, each
driven by vLLM's own serving benchmark (`vllm.benchmarks.serve`, what `vllm bench serve` runs) on its random
dataset with a fixed seed and forced output lengths (--ignore-eos), through the chat endpoint.

    python scripts/bench_serve.py                            # both modes, concurrency 1 and 16: ~25 min on 2 cores
    python scripts/bench_serve.py --mode defaults --servers vllm,swift-vllm
    python scripts/bench_serve.py --mode defaults --servers swift-pt,ms-swift --msswift_python ~/msswift-venv/bin/python
    python scripts/bench_serve.py --mode like-for-like --concurrency 1 4 16 --input_len 256 --output_len 128

Two modes, each printed with its ratios to raw vLLM (to ms-swift when vLLM is not among the servers; no ratios
when neither is):
- `defaults`: every server started exactly as a user would start it, with nothing but the model and the port
  (`python -m vllm.entrypoints.openai.api_server --model <dir>`, `swift deploy --model_id_or_path <dir>`, ms-swift
  with `--max_batch_size 16`, its only way to batch): what a user compares.
- `like-for-like`: the same engine settings in each server's spelling (dtype, context length, batch limit,
  eager or compiled): the serving layers compared, not the defaults.
The servers run one at a time on a free loopback port, with the same model (the embedded default unless
--model_dir). Cold start to ready (/v1/models answers) is measured for each. With --rounds N each server is started
N times in alternating order (A B, B A, A B, ...: the server run second in a pair tends to lose on this machine) and
the tables show each metric's median over the rounds, and each round's ratio beside it. Writes
benchmarks/results/bench_serve-<time>.json (the medians, and every round under "rounds").
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_results import write_results  # scripts/ is sys.path[0]

SERVERS = ("vllm", "swift-vllm", "swift-pt", "ms-swift")
MODES = ("defaults", "like-for-like")
SWIFT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
METRICS = (("request_throughput", "req/s", 2), ("output_throughput", "out tok/s", 1),
           ("median_ttft_ms", "TTFT p50 ms", 1), ("p99_ttft_ms", "TTFT p99 ms", 1),
           ("median_tpot_ms", "TPOT p50 ms", 1), ("median_itl_ms", "ITL p50 ms", 1),
           ("median_e2el_ms", "E2EL p50 ms", 0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: str, mode: str, args: argparse.Namespace, port: int) -> list[str]:
    """How `server` is started in `mode`; like-for-like spells the same engine settings in each server's flags."""
    model, address = args.model_dir, ["--host", "127.0.0.1", "--port", str(port)]
    if server == "vllm":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *address,
               "--uvicorn-log-level", "warning"]
        if mode == "defaults":
            return cmd
        return cmd + ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
                      "--max-num-seqs", str(max(args.concurrency)), "--seed", "0"] + \
            (["--enforce-eager"] if args.enforce_eager else [])
    if server == "ms-swift":  # ms-swift 4.6 in its own environment; it batches only with --max_batch_size
        cmd = [args.msswift_python, "-m", "swift.cli.deploy", "--model", model, "--infer_backend", "transformers",
               "--max_batch_size", str(max(args.concurrency)), *address]
        if args.msswift_model_type:  # ms-swift cannot tell some checkpoints' type (SmolLM2: any llama)
            cmd += ["--model_type", args.msswift_model_type, "--template", args.msswift_template]
        return cmd if mode == "defaults" else cmd + ["--torch_dtype", args.dtype]
    backend = server.removeprefix("swift-")
    cmd = [sys.executable, "-m", "swiftcli", "deploy", "--infer_backend", backend, "--model_id_or_path", model,
           "--port", str(port), *args.swift_flags.split()]
    if mode == "defaults":
        return cmd
    return cmd + ["--dtype", SWIFT_DTYPES[args.dtype], "--max_model_len", str(args.max_model_len),
                  "--max_num_seqs", str(max(args.concurrency)), "--max_batch_size", str(max(args.concurrency)),
                  "--enforce_eager", str(args.enforce_eager).lower(), "--log_interval", "0"]


def served_model(port: int) -> str | None:
    """The first model id /v1/models lists (None while the server is not up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
            return json.load(r)["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def wait_ready(proc: subprocess.Popen, port: int, log_path: str, timeout: float = 900) -> tuple[float, str]:
    """Seconds until /v1/models answers (every server has it) and the model id it serves; fails with the log's tail
    if the server died."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        model = served_model(port)
        if model is not None:
            return time.perf_counter() - start, model
        time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout} s")


def run_benchmark(port: int, model: str, concurrency: int, args: argparse.Namespace) -> dict:
    """One `vllm bench serve` run of streaming chats against the server on `port`; returns vLLM's result dict."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    num_prompts = max(concurrency * args.prompts_per_concurrency, args.min_prompts)
    bench_args = parser.parse_args([
        "--backend", "openai-chat", "--host", "127.0.0.1", "--port", str(port), "--endpoint", "/v1/chat/completions",
        "--model", model, "--tokenizer", args.model_dir, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--ignore-eos",
        "--seed", str(args.seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--num-warmups", str(min(concurrency, 4)), "--disable-tqdm",
        # also the older max_tokens: ms-swift 4.6 ignores max_completion_tokens (and ignore_eos) and would generate
        # to its context length
        "--extra-body", json.dumps({"max_tokens": args.output_len})])
    return main(bench_args)


def bench_server(server: str, mode: str, args: argparse.Namespace, log_dir: str, index: int = 0) -> dict:
    port, log_path = free_port(), os.path.join(log_dir, f"{mode}-{server}-{index}.log")
    env = dict(os.environ)
    if mode == "like-for-like":  # the defaults mode leaves vLLM's KV cache size to each server, as a user would
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")
    command = server_command(server, mode, args, port)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        startup, model = wait_ready(proc, port, log_path)
        print(f"[{mode}] {server}: ready in {startup:.0f} s", flush=True)
        runs = {}
        for c in args.concurrency:
            result = run_benchmark(port, model, c, args)
            runs[c] = {key: result.get(key) for key, _, _ in METRICS} | {
                "completed": result.get("completed"), "failed": result.get("failed", 0),
                "total_output_tokens": result.get("total_output_tokens")}
            print(f"[{mode}] {server} c={c}: {runs[c]}", flush=True)
        return {"command": command[1:], "startup_s": startup, "runs": runs}
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def median_result(rounds: list[dict]) -> dict:
    """One server's rounds -> their median start time and median of each metric per concurrency (the rounds kept)."""
    if len(rounds) == 1:
        return rounds[0]
    runs = {}
    for c in rounds[0]["runs"]:
        values = {key: [r["runs"][c][key] for r in rounds if r["runs"][c].get(key) is not None]
                  for key in rounds[0]["runs"][c]}
        runs[c] = {key: statistics.median(v) if v else None for key, v in values.items()}
    return {"command": rounds[0]["command"], "startup_s": statistics.median(r["startup_s"] for r in rounds),
            "runs": runs, "rounds": rounds}


def ratio(run: dict, raw: dict | None, key: str) -> float | None:
    return run[key] / raw[key] if raw and run.get(key) and raw.get(key) else None


def print_table(mode: str, results: dict[str, dict], concurrency: list[int]) -> None:
    """Each server's metrics and its ratios to raw vLLM's (to ms-swift's when vLLM did not run)."""
    base = next((server for server in ("vllm", "ms-swift") if server in results), None)
    label = base or "none"  # no baseline ran: the ratio columns show "-"
    rounds = max(len(result.get("rounds", [result])) for result in results.values()) if results else 1
    header = f"{'server':<12}{'conc':>5}{'start s':>9}" + "".join(f"{label:>13}" for _, label, _ in METRICS) + \
        f"{f'tok/s x {label}':>18}{f'TTFT x {label}':>17}" + (f"  tok/s x {label} by round" if rounds > 1 else "")
    print(f"\n{mode}" + (f" (median of {rounds} rounds):" if rounds > 1 else ":") + f"\n{header}")
    for c in concurrency:
        base_result = results.get(base) if base else None
        raw = base_result["runs"].get(c) if base_result else None
        for server, result in results.items():
            run = result["runs"][c]
            cells = "".join(f"{run[key]:>13.{digits}f}" if run[key] is not None else f"{'-':>13}"
                            for key, _, digits in METRICS)
            line = f"{server:<12}{c:>5}{result['startup_s']:>9.0f}{cells}"
            for key, width in (("output_throughput", 18), ("median_ttft_ms", 17)):
                value = ratio(run, raw, key)
                line += f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}}"
            if rounds > 1 and base_result and server != base:
                pairs = zip(result.get("rounds", []), base_result.get("rounds", []))
                by_round = (ratio(mine["runs"][c], theirs["runs"][c], "output_throughput") for mine, theirs in pairs)
                line += "  " + " ".join(f"{value:.3f}" if value is not None else "-" for value in by_round)
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="both", choices=[*MODES, "both"])
    parser.add_argument("--servers", default="vllm,swift-vllm,swift-pt",
                        help=f"comma-separated, from {SERVERS} (ms-swift needs --msswift_python)")
    parser.add_argument("--msswift_python", default=None, help="the Python of an environment with ms-swift 4.6")
    parser.add_argument("--msswift_model_type", default="llama", help="ms-swift's --model_type ('' to detect)")
    parser.add_argument("--msswift_template", default="chatml", help="ms-swift's --template (SmolLM2's: chatml)")
    parser.add_argument("--swift_flags", default="", help="more flags for the swift servers, to measure a setting")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompts_per_concurrency", type=int, default=3)
    parser.add_argument("--min_prompts", type=int, default=8)
    parser.add_argument("--input_len", type=int, default=64)
    parser.add_argument("--output_len", type=int, default=64)
    parser.add_argument("--max_model_len", type=int, default=2048, help="like-for-like")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="like-for-like")
    parser.add_argument("--enforce_eager", type=lambda s: s.lower() in ("1", "true"), default=True,
                        help="like-for-like")
    parser.add_argument("--model_dir", default=None, help="a HF checkpoint directory (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1,
                        help="start each server this many times (default 1), the list of --servers reversed every "
                             "other round; the tables show medians and each round's ratio")
    args = parser.parse_args()
    if args.model_dir is None:
        from swiftcli.model import embedded_model_dir

        args.model_dir = embedded_model_dir()
    servers = args.servers.split(",")
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {SERVERS}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if "ms-swift" in servers and not args.msswift_python:
        parser.error("ms-swift needs --msswift_python (an environment with `pip install ms-swift==4.6.0`)")

    modes = MODES if args.mode == "both" else (args.mode,)
    results: dict[str, dict[str, dict]] = {mode: {} for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench_serve-") as log_dir:
        for mode in modes:
            rounds: dict[str, list[dict]] = {server: [] for server in servers}
            for index in range(args.rounds):
                for server in servers if index % 2 == 0 else servers[::-1]:
                    try:
                        rounds[server].append(bench_server(server, mode, args, log_dir, index))
                    except RuntimeError as e:  # the others still run and are reported
                        print(f"[{mode}] {server}: failed: {e}", file=sys.stderr)
            results[mode] = {server: median_result(runs) for server, runs in rounds.items()
                             if runs}
    print(f"\nstreaming chats: {args.input_len} random prompt tokens -> {args.output_len} forced output tokens, "
          f"{args.prompts_per_concurrency} prompts per concurrency slot (at least {args.min_prompts}); "
          f"like-for-like: {args.dtype}, enforce_eager {args.enforce_eager}; {args.rounds} round(s)")
    for mode in modes:
        print_table(mode, results[mode], args.concurrency)
    write_results("bench_serve", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()

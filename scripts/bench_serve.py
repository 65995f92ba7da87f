"""Serving benchmark, side by side in one run: vLLM's own OpenAI server, `swift deploy --infer_backend vllm` and
`swift deploy --infer_backend pt`, each driven by vLLM's own serving benchmark (`vllm.benchmarks.serve`, what
`vllm bench serve` runs) on its random dataset with a fixed seed and forced output lengths (--ignore-eos).

    python scripts/bench_serve.py                            # concurrency 1, 8, 32: ~10 minutes on 2 cores
    python scripts/bench_serve.py --concurrency 1 4 16 64 --prompts_per_concurrency 8 --input_len 256 --output_len 128
    python scripts/bench_serve.py --servers vllm,swift-vllm   # only the two vLLM servers

The servers run one at a time on a free loopback port, with the same model (the embedded default unless
--model_dir), dtype, context length and batch limit; vLLM compiles nothing (--enforce-eager) on CPU. Prints a table
with each server's ratio to raw vLLM and writes benchmarks/results/bench_serve-<time>.json.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_results import write_results  # scripts/ is sys.path[0]

SERVERS = ("vllm", "swift-vllm", "swift-pt")
NAME = "bench-model"
SWIFT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
METRICS = (("request_throughput", "req/s", 2), ("output_throughput", "out tok/s", 1),
           ("median_ttft_ms", "TTFT p50 ms", 1), ("p99_ttft_ms", "TTFT p99 ms", 1),
           ("median_tpot_ms", "TPOT p50 ms", 1), ("median_itl_ms", "ITL p50 ms", 1),
           ("median_e2el_ms", "E2EL p50 ms", 0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: str, args: argparse.Namespace, port: int) -> list[str]:
    """The same engine settings, in each server's own spelling."""
    if server == "vllm":
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model_dir,
               "--served-model-name", NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", args.dtype,
               "--max-model-len", str(args.max_model_len), "--max-num-seqs", str(max(args.concurrency)),
               "--seed", "0", "--uvicorn-log-level", "warning"]
        return cmd + (["--enforce-eager"] if args.enforce_eager else [])
    backend, dtype = server.removeprefix("swift-"), SWIFT_DTYPES[args.dtype]
    return [sys.executable, "-m", "swiftcli", "deploy", "--infer_backend", backend, "--model_id_or_path",
            args.model_dir, "--served_model_name", NAME, "--port", str(port), "--dtype", dtype,
            "--max_model_len", str(args.max_model_len), "--max_num_seqs", str(max(args.concurrency)),
            "--max_batch_size", str(max(args.concurrency)), "--enforce_eager", str(args.enforce_eager).lower(),
            "--log_interval", "0"]


def wait_ready(proc: subprocess.Popen, port: int, log_path: str, timeout: float = 900) -> float:
    """Seconds until /health answers 200 (both servers have it); fails with the log's tail if the server died."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server not ready after {timeout} s")


def run_benchmark(port: int, concurrency: int, args: argparse.Namespace) -> dict:
    """One `vllm bench serve` run against the server on `port`; returns vLLM's result dict."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    num_prompts = max(concurrency * args.prompts_per_concurrency, args.min_prompts)
    bench_args = parser.parse_args([
        "--backend", "vllm", "--host", "127.0.0.1", "--port", str(port), "--endpoint", "/v1/completions",
        "--model", NAME, "--tokenizer", args.model_dir, "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--ignore-eos",
        "--seed", str(args.seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--num-warmups", str(min(concurrency, 4)), "--disable-tqdm"])
    return main(bench_args)


def bench_server(server: str, args: argparse.Namespace, log_dir: str) -> dict:
    port, log_path = free_port(), os.path.join(log_dir, f"{server}.log")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(server_command(server, args, port), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        startup = wait_ready(proc, port, log_path)
        print(f"{server}: ready in {startup:.0f} s", flush=True)
        runs = {}
        for c in args.concurrency:
            result = run_benchmark(port, c, args)
            runs[c] = {key: result.get(key) for key, _, _ in METRICS} | {
                "completed": result.get("completed"), "failed": result.get("failed", 0)}
            print(f"{server} c={c}: {runs[c]}", flush=True)
        return {"startup_s": startup, "runs": runs}
    finally:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()


def print_table(results: dict[str, dict], concurrency: list[int]) -> None:
    header = f"{'server':<12}{'conc':>5}" + "".join(f"{label:>13}" for _, label, _ in METRICS) + \
        f"{'tok/s x vLLM':>14}{'TTFT-vLLM ms':>14}"
    print("\n" + header)
    for c in concurrency:
        raw = results.get("vllm", {}).get("runs", {}).get(c)
        for server, result in results.items():
            run = result["runs"][c]
            cells = "".join(f"{run[key]:>13.{digits}f}" if run[key] is not None else f"{'-':>13}"
                            for key, _, digits in METRICS)
            ratio = f"{run['output_throughput'] / raw['output_throughput']:>14.3f}" if raw else f"{'-':>14}"
            ttft = f"{run['median_ttft_ms'] - raw['median_ttft_ms']:>+14.1f}" if raw else f"{'-':>14}"
            print(f"{server:<12}{c:>5}{cells}{ratio}{ttft}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, from {SERVERS}")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompts_per_concurrency", type=int, default=2)
    parser.add_argument("--min_prompts", type=int, default=8)
    parser.add_argument("--input_len", type=int, default=64)
    parser.add_argument("--output_len", type=int, default=64)
    parser.add_argument("--max_model_len", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--enforce_eager", type=lambda s: s.lower() in ("1", "true"), default=True)
    parser.add_argument("--model_dir", default=None, help="a HF checkpoint directory (default: the embedded model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.model_dir is None:
        from swiftcli.model import embedded_model_dir

        args.model_dir = embedded_model_dir()
    servers = args.servers.split(",")
    unknown = set(servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {SERVERS}")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_serve-") as log_dir:
        for server in servers:
            try:
                results[server] = bench_server(server, args, log_dir)
            except RuntimeError as e:  # the others still run and are reported
                print(f"{server}: failed: {e}", file=sys.stderr)
    print(f"\n{args.input_len} prompt tokens -> {args.output_len} forced output tokens, {args.dtype}, "
          f"{args.prompts_per_concurrency} prompts per concurrency slot (at least {args.min_prompts})")
    print_table(results, args.concurrency)
    write_results("bench_serve", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()

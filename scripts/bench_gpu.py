"""GPU proof of the pt engine at a real model size: batch-1 decode tok/s and MBU, batch-32 throughput vs HF generate.

    python scripts/bench_gpu.py --tokenizer_dir <dir with tokenizer.json> [--config qwen2.5-1.5b] [--check]

Side by side in one run: the pt engine's eager decode loop (`eager`, `--enforce_eager true`), its static-KV-cache
decode step replayed from CUDA graphs (`graphs`, `--torch_compile false`), the same step compiled with torch.compile
before capture (`compiled`, the default on CUDA: its batch-1 step is our Triton kernels), the same with batch 1
compiled too (`inductor`), and HF `generate`. `--profile` prints the kernels of the batch-1 step; `--kernels` first
times each batch-1 kernel alone (cuBLAS, SDPA, our Triton ones at several block sizes, with and without PDL).
The model is built from a config with random bf16 weights (speed does not depend on the values). Its vocabulary is
the tokenizer's, so generated ids always decode. MBU = bytes read per decode step (weights + KV cache) x steps/s
divided by the card's measured device-to-device copy bandwidth. `--check` first compares, in fp32, greedy tokens of
the default static path (rows joining at different steps) with a cache-free greedy loop, and 64 staggered requests
of mixed prompt lengths, max_tokens, stop strings and sampling settings through the async engine with the eager
path's tokens for each alone; with `eager` and `compiled` among the variants, the bf16 tokens of both are scored by
teacher forcing. Writes benchmarks/results/bench_gpu[-<tag>]-<time>.json (and $OUT/bench_gpu[-<tag>].json).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench_results import write_results  # noqa: E402  (scripts/ is sys.path[0])

DEVICE = "cuda"  # scripts may point this elsewhere for a dry run of the script itself
VARIANTS = {"eager": {"static_decode": False}, "graphs": {"static_decode": True, "compile": False},
            "compiled": {"static_decode": True, "compile": True},
            "inductor": {"static_decode": True, "compile": True, "fused": False, "batch32": False}}
"""compiled: the default on CUDA (batch 1 in our Triton kernels, other batches compiled); inductor: batch 1 compiled
too (the 2026-11-29 code's default)."""
CONFIGS = {  # Qwen2.5 shapes (vocabulary replaced by the tokenizer's)
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": True},  # a smoke test of this script
}


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 2 * src.numel() * reps / (time.perf_counter() - start)


def build_model(config_name: str, vocab_size: int, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab_size, max_position_embeddings=4096, **CONFIGS[config_name])
    torch.manual_seed(0)
    with torch.device(DEVICE):
        return Qwen2ForCausalLM(config).to(dtype).eval()


def make_engine(model, tokenizer, config_name: str, **kwargs):
    from swiftcli.engine.base import EngineInfo
    from swiftcli.engine.pt_engine import PtEngine
    from swiftcli.protocol import RequestConfig
    from swiftcli.template import get_template

    info = EngineInfo(config_name, "", "pt", str(model.dtype).removeprefix("torch."), 4096)
    fused = kwargs.pop("fused", None)
    engine = PtEngine(model, get_template("chatml", tokenizer), info, RequestConfig(temperature=0), max_batch_size=64,
                      **kwargs)
    if fused is not None and engine.static is not None:
        engine.static.fused = fused
    if engine.static is not None and engine.static.fused:
        engine.info.details["decode"] += ", Triton batch 1"
    return engine


def generate(engine, queries: list[str], max_tokens: list[int], stagger: float = 0.0) -> list[list[int]]:
    """Greedy token ids per query (ignore_eos); with stagger, each request joins that many seconds after the last."""
    from swiftcli.protocol import InferRequest, RequestConfig

    async def go() -> list:
        tasks = []
        for query, n in zip(queries, max_tokens):
            request = InferRequest(messages=[{"role": "user", "content": query}])
            config = RequestConfig(max_tokens=n, temperature=0, ignore_eos=True)
            tasks.append(asyncio.create_task(engine.infer_async(request, config)))
            await asyncio.sleep(stagger)
        return await asyncio.gather(*tasks)

    return [r.choices[0].token_ids for r in asyncio.run(go())]


def run_engine(engine, batch: int, new_tokens: int) -> tuple[float, float]:
    """(tok/s of a timed run, seconds of the warm-up run before it)."""
    queries = [f"Tell me about topic {i}." for i in range(batch)]
    start = time.perf_counter()
    generate(engine, queries, [new_tokens] * batch)  # warm-up: graph captures, torch.compile
    warmup = time.perf_counter() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = sum(map(len, generate(engine, queries, [new_tokens] * batch)))
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start), warmup


def first_token_ms(engine, repeats: int = 5) -> float:
    """Median milliseconds of a one-token batch-1 request (template, prefill, first token, the engine's loop)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(engine, ["Tell me about topic 0."], [1])
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def graph_step_ms(engine) -> float | None:
    """Milliseconds per replay of the captured batch-1 decode step alone (no host work between steps)."""
    decoder = engine.static
    if decoder is None or not decoder.graphs:
        return None
    _, (graph, _) = min(decoder.graphs.items())  # batch bucket 1
    decoder.positions.zero_()  # 100 replays write positions 0..99 of idle slots
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(100):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 10


def prompt_ids(engine, query: str) -> list[int]:
    from swiftcli.protocol import InferRequest

    return engine.encode(InferRequest(messages=[{"role": "user", "content": query}])).input_ids


@torch.inference_mode()
def reference_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy tokens from full forwards without any cache."""
    ids, out = list(ids), []
    for _ in range(steps):
        out.append(int(model(input_ids=torch.tensor([ids], device=DEVICE)).logits[0, -1].argmax()))
        ids.append(out[-1])
    return out


@torch.inference_mode()
def teacher_forced_gaps(model, ids: list[int], tokens: list[int]) -> list[float]:
    """Per generated token: max logit - its logit, under a cache-free forward of the whole sequence (0: argmax)."""
    logits = model(input_ids=torch.tensor([ids + tokens], device=DEVICE)).logits[0, len(ids) - 1:-1].float()
    return (logits.max(-1).values - logits[torch.arange(len(tokens)), torch.tensor(tokens)]).tolist()


CHECK_QUERIES = ["Hi", "Tell me about topic 7.", ("Write a long poem about the sea, the sky, the wind and the "
                                                  "mountains of Norway in the middle of a cold winter night."), "2+2="]
CHECK_TOKENS = [24, 9, 17, 30]


def check(config_name: str, tokenizer) -> dict:
    """fp32, the default static path (compiled CUDA graphs): rows joining while others decode vs a cache-free greedy
    loop, token for token; then the serving-shaped check against the eager path."""
    model = build_model(config_name, len(tokenizer), torch.float32)
    engine = make_engine(model, tokenizer, config_name, static_decode=True)
    start = time.perf_counter()
    got = generate(engine, CHECK_QUERIES, CHECK_TOKENS, stagger=0.02)
    compile_s = time.perf_counter() - start
    want = [reference_greedy(model, prompt_ids(engine, q), n) for q, n in zip(CHECK_QUERIES, CHECK_TOKENS)]
    equal = [g == w for g, w in zip(got, want)]
    print(f"check fp32 {engine.info.details['decode']} vs cache-free greedy: {sum(equal)}/{len(equal)} requests "
          f"equal token for token", flush=True)
    out = {"decode": engine.info.details["decode"], "fp32_equal_requests": sum(equal), "fp32_requests": len(equal),
           "fp32_first_requests_s": compile_s}
    try:
        out["serving"] = serving_check(model, engine, make_engine(model, tokenizer, config_name, static_decode=False))
    except Exception as e:  # noqa: BLE001  the speed numbers still come
        out["serving"] = {"error": f"{type(e).__name__}: {e}"}
        print("serving check failed:", out["serving"]["error"], flush=True)
    del engine, model
    torch.cuda.empty_cache()
    return out


def serving_requests(count: int = 64, seed: int = 0) -> list[tuple[str, dict]]:
    """Mixed prompt lengths (a few words to ~300, so some rows outgrow the first 256-position cache), max_tokens,
    stop strings and sampling settings, as a server sees them."""
    rng = random.Random(seed)
    words = "the sea sky wind mountain winter night cold river light stone tree bird song city road".split()
    out = []
    for i in range(count):
        query = f"Request {i}: " + " ".join(rng.choice(words) for _ in range(rng.choice([2, 9, 30, 80, 180, 300])))
        config = dict(max_tokens=rng.choice([1, 2, 7, 16, 33, 64]), seed=i)
        kind = i % 4
        if kind == 0:
            config.update(temperature=0)
        elif kind == 1:
            config.update(temperature=0.8, top_p=0.9)
        elif kind == 2:
            config.update(temperature=1.1, top_k=20, repetition_penalty=1.1)
        else:
            config.update(temperature=0, stop=[])  # serving_check picks a stop string from the reply
        out.append((query, config))
    return out


def serving_check(model, static, eager) -> dict:
    """64 requests arriving staggered through the async engine (as `swift deploy` drives it), each compared with the
    eager path's tokens for it alone. A difference is reported with the logit gap, under a cache-free forward,
    between the two tokens where they part (a near-tie is a gap of a few 1e-5 in fp32)."""
    from swiftcli.protocol import InferRequest, RequestConfig

    def alone(query: str, config: dict):
        return eager.infer([InferRequest(messages=[{"role": "user", "content": query}])], RequestConfig(**config))[0]

    items = serving_requests()
    for query, config in items:  # a stop string from the middle of the greedy reply, so that it fires
        if config.get("stop") == []:
            text = alone(query, {**config, "stop": []}).choices[0].text
            config["stop"] = [text[len(text) // 2:].strip()[:2] or "e"]
    want = [alone(q, c).choices[0] for q, c in items]
    rng = random.Random(1)

    async def go() -> list:
        tasks = []
        for query, config in items:
            request = InferRequest(messages=[{"role": "user", "content": query}])
            tasks.append(asyncio.create_task(static.infer_async(request, RequestConfig(**config))))
            await asyncio.sleep(rng.choice([0, 0, 0.005, 0.02, 0.05]))
        return await asyncio.gather(*tasks)

    start = time.perf_counter()
    got = [r.choices[0] for r in asyncio.run(go())]
    static_s = time.perf_counter() - start
    differ = []
    for i, (a, b, (query, config)) in enumerate(zip(got, want, items)):
        if (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason):
            continue
        j = next((k for k, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), None)
        entry = {"request": i, "config": config, "static": a.token_ids, "eager": b.token_ids,
                 "finish": [a.finish_reason, b.finish_reason]}
        if j is not None:
            ids = prompt_ids(eager, query) + b.token_ids[:j]
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids], device=DEVICE)).logits[0, -1].float()
            entry.update(position=j, gap=float(logits[b.token_ids[j]] - logits[a.token_ids[j]]),
                         top_gap=float(logits.topk(2).values[0] - logits.topk(2).values[1]))
        differ.append(entry)
    print(f"serving check fp32: {len(items) - len(differ)}/{len(items)} requests equal to the eager path's alone "
          f"({sum(len(a.token_ids) for a in got)} tokens, {static_s:.1f} s staggered); speculative windows taken: "
          f"{static.static.taken}", flush=True)
    for entry in differ:
        print(f"  differs: {json.dumps(entry)[:400]}")
    return {"requests": len(items), "equal": len(items) - len(differ), "differ": differ,
            "tokens": sum(len(a.token_ids) for a in got), "finish_reasons": sorted({a.finish_reason for a in got})}


def run_hf(model, tokenizer, batch: int, new_tokens: int) -> float:
    prompts = [f"Tell me about topic {i}." for i in range(batch)]
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(DEVICE)
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
    parser.add_argument("--variants", default="eager,graphs,compiled", help=f"of {','.join(VARIANTS)}")
    parser.add_argument("--check", action="store_true", help="correctness checks first")
    parser.add_argument("--profile", action="store_true", help="kernel times of the compiled batch-1 step")
    parser.add_argument("--tag", default="", help="results file name: bench_gpu-<tag>-<time>.json")
    parser.add_argument("--batch32", default="1", help="0: skip the batch-32 runs")
    parser.add_argument("--kernels", action="store_true",
                        help="first time the batch-1 kernels alone (cuBLAS, SDPA, our Triton ones at several block "
                             "sizes) and use the fastest blocks; --variants none: only that")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    result: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "config": args.config,
                    "date": time.strftime("%Y-%m-%d"), "new_tokens": args.new_tokens}
    import transformers

    result["transformers"] = transformers.__version__
    if args.kernels:
        result["kernels"] = kernel_bench(args.config)
        if args.variants == "none":
            write_results("bench_gpu" + (f"-{args.tag}" if args.tag else ""), result)
            return
    if args.check:
        result["check"] = check(args.config, tokenizer)
    bandwidth = copy_bandwidth()
    model = build_model(args.config, len(tokenizer), torch.bfloat16)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    step_bytes = weight_bytes + kv_per_token * (30 + args.new_tokens / 2)  # batch 1, average context
    result.update(weights_gb=weight_bytes / 1e9, copy_bandwidth_tb_s=bandwidth / 1e12)
    if args.kernels:
        from swiftcli.engine import fused_layer

        result["gemv_blocks"] = {str(k): v for k, v in fused_layer.GEMV_BLOCKS.items()}
    hf1, hf32 = run_hf(model, tokenizer, 1, args.new_tokens), run_hf(model, tokenizer, 32, args.new_tokens)
    hf = {"batch1_tok_s": hf1, "batch1_mbu": step_bytes * hf1 / bandwidth, "batch32_tok_s": hf32}
    print("hf_generate", json.dumps(hf), flush=True)
    rows, engines = {}, {}
    for name in args.variants.split(","):
        kwargs = dict(VARIANTS[name])
        batch32 = kwargs.pop("batch32", True) and args.batch32 != "0"  # inductor: batch 32 runs as in compiled
        engine = engines[name] = make_engine(model, tokenizer, args.config, **kwargs)
        try:
            b1, warm1 = run_engine(engine, 1, args.new_tokens)
            row = {"decode": engine.info.details["decode"], "batch1_tok_s": b1,
                   "batch1_mbu": step_bytes * b1 / bandwidth, "warmup_s": warm1,
                   "first_token_ms": first_token_ms(engine)}
            step = graph_step_ms(engine)
            if step is not None:
                row.update(graph_step_ms=step, graph_mbu=step_bytes / (step / 1e3) / bandwidth)
            if engine.static is not None and engine.decode_steps > 1:
                engine.decode_steps = 1  # the host looks at every token
                row["batch1_one_step_tok_s"] = run_engine(engine, 1, args.new_tokens)[0]
                engine.decode_steps = 8
            if batch32:
                row["batch32_tok_s"], row["batch32_warmup_s"] = run_engine(engine, 32, args.new_tokens)
            if engine.static is not None:
                row["speculative_windows_taken"] = engine.static.taken
        except Exception as e:  # noqa: BLE001  one broken variant must not lose the others' numbers
            row = {"error": f"{type(e).__name__}: {e}"}
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    rows["hf_generate"] = hf
    if "compiled" in rows and "error" not in rows["compiled"] and "eager" in rows and "error" not in rows["eager"]:
        result["compiled_vs_eager_teacher_forced"] = compare_compiled(model, engines)
    if args.profile and "compiled" in engines and engines["compiled"].static is not None:
        result["profile_compiled_batch1"] = profile_step(engines["compiled"])
    result["variants"] = rows
    print(f"{result['card']}, {args.config} (random bf16, {result['weights_gb']:.2f} GB), "
          f"copy bandwidth {result['copy_bandwidth_tb_s']:.2f} TB/s, {args.new_tokens} new tokens")
    print(f"{'':<12}" + "".join(f"{name:>14}" for name in rows))
    for key, label, fmt in (("batch1_tok_s", "b1 tok/s", "{:.1f}"), ("batch1_mbu", "b1 MBU", "{:.1%}"),
                            ("graph_mbu", "graph MBU", "{:.1%}"), ("batch32_tok_s", "b32 tok/s", "{:.0f}")):
        print(f"{label:<12}" + "".join(f"{fmt.format(r[key]) if key in r else '-':>14}" for r in rows.values()))
    print(f"{'b32 vs HF':<12}" + "".join(f"{r['batch32_tok_s'] / hf32:>13.2f}x" if "batch32_tok_s" in r else
                                        f"{'-':>14}" for r in rows.values()))
    write_results("bench_gpu" + (f"-{args.tag}" if args.tag else ""), result)


GEMV_SWEEP = [(2, 512, 4), (4, 256, 4), (4, 512, 4), (8, 256, 4), (16, 256, 4), (2, 1024, 4), (4, 1024, 4),
              (2, 2048, 4), (4, 2048, 8)]
"""(rows per program, columns per step, warps) tried by --kernels."""


def graph_us(fn, replays: int = 20) -> float:
    """Microseconds per call of fn, captured once in a CUDA graph and replayed (so launch gaps count as in the step)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


@torch.inference_mode()
def kernel_bench(config_name: str) -> dict:
    """Batch-1 kernels of the config's shape, each run over every layer's own weights (28 layers: no L2 reuse) and
    timed per step in a CUDA graph: cuBLAS (F.linear), our Triton gemv at each GEMV_SWEEP block size, and the
    attention as the compiled step's two products, as SDPA, and as our kernel, at 30 and 200 filled positions.
    Sets fused_layer.GEMV_BLOCKS to the fastest blocks for the rest of the run."""
    import torch.nn.functional as F

    from swiftcli.engine import fused_layer
    from swiftcli.engine.fused_layer import LayerShape, decode_attention, gemv

    cfg, dtype = CONFIGS[config_name], torch.bfloat16
    hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dim, vocab = hidden // heads, 49152
    torch.manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=dtype) * 0.02

    qkv_n = (heads + 2 * kv_heads) * dim
    w = [dict(qkv=randn(qkv_n, hidden), qkv_bias=randn(qkv_n), o=randn(hidden, hidden),
              gate_up=randn(2 * inter, hidden), down=randn(hidden, inter), norm=1 + randn(hidden))
         for _ in range(layers)]
    lm_head = randn(vocab, hidden)
    x, xi, xq = randn(1, hidden), randn(1, inter), randn(1, qkv_n)
    out: dict = {"layers": layers, "gemv": {}, "cublas": {}, "attention": {}}
    total_bytes = {"qkv": qkv_n * hidden * 2 * layers, "o": hidden * hidden * 2 * layers,
                   "gate_up": 2 * inter * hidden * 2 * layers, "down": hidden * inter * 2 * layers,
                   "lm_head": vocab * hidden * 2}
    cublas = {
        "qkv": lambda: [F.linear(x, l["qkv"], l["qkv_bias"]) for l in w],
        "o": lambda: [x + F.linear(x, l["o"]) for l in w],
        "gate_up": lambda: [F.linear(x, l["gate_up"]) for l in w],
        "gate_up+act": lambda: [(lambda g: F.silu(g[:, :inter]) * g[:, inter:])(F.linear(x, l["gate_up"])) for l in w],
        "down": lambda: [x + F.linear(xi, l["down"]) for l in w],
        "lm_head": lambda: F.linear(x, lm_head),
    }
    for name, fn in cublas.items():
        us = graph_us(fn)
        gb = total_bytes[name.split("+")[0]]
        out["cublas"][name] = {"us": us, "tb_s": gb / us / 1e6}
        print(f"kernels cublas {name:<12} {us:8.1f} us/step  {gb / us / 1e6:5.2f} TB/s", flush=True)
    ours = {
        "qkv": (lambda: [gemv(x, l["qkv"], l["qkv_bias"], norm=l["norm"], eps=1e-6) for l in w], (qkv_n, hidden)),
        "o": (lambda: [gemv(x, l["o"], residual=x) for l in w], (hidden, hidden)),
        "gate_up": (lambda: [gemv(x, l["gate_up"], norm=l["norm"], eps=1e-6, glu=True) for l in w], (inter, hidden)),
        "down": (lambda: [gemv(xi, l["down"], residual=x) for l in w], (hidden, inter)),
        "lm_head": (lambda: gemv(x, lm_head, norm=w[0]["norm"], eps=1e-6), (vocab, hidden)),
    }
    for name, (fn, key) in ours.items():
        times = {}
        for blocks in GEMV_SWEEP:
            fused_layer.GEMV_BLOCKS[key] = blocks
            try:
                times[blocks] = graph_us(fn)
            except Exception as e:  # noqa: BLE001
                print(f"kernels gemv {name} {blocks}: {type(e).__name__}: {e}"[:300], flush=True)
        if not times:
            fused_layer.GEMV_BLOCKS.pop(key, None)
            continue
        best = min(times, key=times.get)
        fused_layer.GEMV_BLOCKS[key] = best
        gb = total_bytes[name]
        out["gemv"][name] = {"shape": key, "best": best, "us": times[best], "tb_s": gb / times[best] / 1e6,
                             "all": {str(b): t for b, t in times.items()}}
        print(f"kernels gemv   {name:<12} {times[best]:8.1f} us/step  {gb / times[best] / 1e6:5.2f} TB/s  best "
              f"{best}; " + ", ".join(f"{b}: {t:.0f}" for b, t in times.items()), flush=True)
    # attention: q/k/v of one row, the cache of 256 positions ([slots, kv_heads, length, dim]) per layer
    shape = LayerShape(heads, kv_heads, dim, 1e-6, 1e-6, dim ** -0.5, None)
    keys = [randn(2, kv_heads, 256, dim) for _ in range(layers)]
    values = [randn(2, kv_heads, 256, dim) for _ in range(layers)]
    rows, cos, sin = torch.zeros(1, dtype=torch.long, device=DEVICE), randn(1, 1, dim), randn(1, 1, dim)
    for filled in (30, 200):
        positions = torch.full((1,), filled, dtype=torch.long, device=DEVICE)
        mask = (torch.arange(256, device=DEVICE)[None, :] <= positions[:, None])[:, None, None, :]
        q = xq[:, :heads * dim].view(1, kv_heads, heads // kv_heads, dim)

        def two_products():
            for k, v in zip(keys, values):
                scores = torch.matmul(q, k[:1].transpose(-1, -2)).float() * shape.scaling
                probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(v.dtype)
                torch.matmul(probs, v[:1])

        def sdpa():
            for k, v in zip(keys, values):
                F.scaled_dot_product_attention(q.view(1, heads, 1, dim), k[:1], v[:1], attn_mask=mask,
                                               scale=shape.scaling, enable_gqa=True)

        def triton_kernel():
            for k, v in zip(keys, values):
                decode_attention(shape, xq, cos, sin, rows, positions, k, v, None, None)

        row = {}
        for name, fn in (("two_products_eager", two_products), ("sdpa", sdpa), ("triton", triton_kernel)):
            try:
                row[name] = graph_us(fn)
            except Exception as e:  # noqa: BLE001
                row[name] = f"{type(e).__name__}: {e}"[:300]
        default = fused_layer.ATTENTION_BLOCK
        for block in ((32, 4), (64, 4), (64, 8), (128, 4), (128, 8)):
            fused_layer.ATTENTION_BLOCK = block
            try:
                row[f"triton {block}"] = graph_us(triton_kernel)
            except Exception as e:  # noqa: BLE001
                row[f"triton {block}"] = f"{type(e).__name__}: {e}"[:300]
        fused_layer.ATTENTION_BLOCK = default
        out["attention"][filled] = row
        print(f"kernels attention, {filled} filled of 256, us/step: "
              + ", ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()), flush=True)
    # the whole layer (5 kernels) x layers, with and without programmatic dependent launch, 100 positions filled
    from swiftcli.engine.fused_layer import LayerWeights, fused_decoder_layer

    weights = [LayerWeights(l["norm"], l["qkv"], l["qkv_bias"], None, None, l["o"], None, l["norm"], l["gate_up"], None,
                            l["down"], None) for l in w]
    positions = torch.full((1,), 100, dtype=torch.long, device=DEVICE)

    def chain():
        h = x
        for weight, k, v in zip(weights, keys, values):
            h = fused_decoder_layer(shape, h, cos, sin, rows, positions, k, v, weight)

    pdl = fused_layer.PDL
    for on in ((True, False) if pdl else (False,)):
        fused_layer.PDL = on
        try:
            out[f"layers_pdl_{on}"] = graph_us(chain)
        except Exception as e:  # noqa: BLE001
            out[f"layers_pdl_{on}"] = f"{type(e).__name__}: {e}"[:300]
        print(f"kernels {layers} layers (5 kernels each), PDL {on}: {out[f'layers_pdl_{on}']} us/step", flush=True)
    fused_layer.PDL = pdl
    del w, lm_head, keys, values, weights
    torch.cuda.empty_cache()
    return out


@torch.inference_mode()
def profile_step(engine) -> dict:
    """Per-step kernel count and GPU time of the smallest captured step, replayed and run without the graph."""
    from torch.profiler import ProfilerActivity, profile

    decoder = engine.static
    batch, length = min(decoder.graphs)
    graph, _ = decoder.graphs[(batch, length)]
    out = {}
    for how, step in (("graph", graph.replay), ("no_graph", lambda: decoder._body(batch, length))):
        decoder.positions.zero_()
        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            for _ in range(10):
                step()
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / 10
        events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
        kernel_us = sum(e.device_time_total for e in events) / 10
        out[how] = {"wall_ms": wall * 1e3, "kernel_ms": kernel_us / 1e3,
                    "kernels": sum(e.count for e in events) / 10,
                    "top": [(e.key[:90], e.count / 10, e.device_time_total / 10) for e in
                            sorted(events, key=lambda e: -e.device_time_total)[:40]]}
        print(f"profile {how}: {out[how]['kernels']:.0f} kernels/step, kernel time {kernel_us / 1e3:.3f} ms, "
              f"wall {wall * 1e3:.3f} ms (profiled)")
        for name, count, us in out[how]["top"]:
            print(f"  {us:8.1f} us {count:5.0f}x  {name}")
    return out


def compare_compiled(model, engines: dict) -> dict:
    """Greedy bf16 tokens of the eager and compiled paths, scored by a cache-free forward (gap 0: the argmax)."""
    out = {}
    for name in ("eager", "compiled"):
        engine = engines[name]
        got = generate(engine, CHECK_QUERIES, CHECK_TOKENS, stagger=0.02)
        gaps = [g for q, t in zip(CHECK_QUERIES, got) for g in teacher_forced_gaps(model, prompt_ids(engine, q), t)]
        out[name] = {"max_gap": max(gaps), "argmax_share": sum(g == 0 for g in gaps) / len(gaps), "tokens": got}
        print(f"teacher-forced bf16 {name}: max gap {max(gaps):.4f}, argmax share {out[name]['argmax_share']:.2%}")
    return out


if __name__ == "__main__":
    main()

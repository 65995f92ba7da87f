"""GPU proof of the pt engine at a real model size: batch-1 decode tok/s and MBU, batch-32 throughput vs HF generate.

    python scripts/bench_gpu.py --tokenizer_dir <dir with tokenizer.json> [--config qwen2.5-1.5b] [--check]

Side by side in one run: the pt engine's eager decode loop (`eager`, `--enforce_eager true`), its static-KV-cache
decode step replayed from CUDA graphs (`graphs`, `--torch_compile false`), the same step compiled with torch.compile
before capture (`compiled`, the default on CUDA), and HF `generate`. `--profile` prints the kernels of the compiled
batch-1 step.
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
            "compiled": {"static_decode": True, "compile": True}}
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
    return PtEngine(model, get_template("chatml", tokenizer), info, RequestConfig(temperature=0), max_batch_size=64,
                    **kwargs)


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
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    result: dict = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "config": args.config,
                    "date": time.strftime("%Y-%m-%d"), "new_tokens": args.new_tokens}
    import transformers

    result["transformers"] = transformers.__version__
    if args.check:
        result["check"] = check(args.config, tokenizer)
    bandwidth = copy_bandwidth()
    model = build_model(args.config, len(tokenizer), torch.bfloat16)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    step_bytes = weight_bytes + kv_per_token * (30 + args.new_tokens / 2)  # batch 1, average context
    result.update(weights_gb=weight_bytes / 1e9, copy_bandwidth_tb_s=bandwidth / 1e12)
    hf1, hf32 = run_hf(model, tokenizer, 1, args.new_tokens), run_hf(model, tokenizer, 32, args.new_tokens)
    hf = {"batch1_tok_s": hf1, "batch1_mbu": step_bytes * hf1 / bandwidth, "batch32_tok_s": hf32}
    print("hf_generate", json.dumps(hf), flush=True)
    rows, engines = {}, {}
    for name in args.variants.split(","):
        engine = engines[name] = make_engine(model, tokenizer, args.config, **VARIANTS[name])
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
            if args.batch32 != "0":
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

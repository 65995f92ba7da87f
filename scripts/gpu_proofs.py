"""Helpers of scripts/gpu_proofs.sh (the GPU proofs of `swift sft` and `swift export --quant_method gptq|awq`).

    python scripts/gpu_proofs.py build --config qwen2.5-1.5b --tokenizer_dir .gpu/tokenizer --out /tmp/m
    python scripts/gpu_proofs.py data --tokenizer_dir .gpu/tokenizer --out /tmp/train.jsonl --eval_out /tmp/eval.txt
    python scripts/gpu_proofs.py sft-summary --run_dir output/... --name lora-1gpu --command "..." --out x.json
    python scripts/gpu_proofs.py quant-check --source /tmp/m --quantized /tmp/m-gptq-int4 --method gptq --out x.json

Models are Qwen2.5-shaped with random bf16 weights and the tokenizer of --tokenizer_dir (speed does not depend on the
values); the data is synthetic text, so a run needs nothing from the network. The quantization check compares the
quantized model with its source on held-out text: perplexity, agreement of the next-token argmax, and a greedy
generation, each on the GPU.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import time

CONFIGS = {  # Qwen2.5 shapes (vocabulary replaced by the tokenizer's)
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
    "qwen2.5-14b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                        num_key_value_heads=8, tie_word_embeddings=False),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),  # for a CPU smoke test of this script
}


def dir_size_mb(path: str) -> float:
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(path, "*.safetensors"))) / 1e6


# ---- build: a random-weight model with a real tokenizer and chat template ---------------------------------------
def build(config: str, tokenizer_dir: str, out: str) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **CONFIGS[config])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for name in os.listdir(tokenizer_dir):  # chat_template.jinja and anything else the tokenizer came with
        if not os.path.exists(os.path.join(out, name)):
            shutil.copy(os.path.join(tokenizer_dir, name), out)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {config}: {params / 1e9:.3f}B parameters, {dir_size_mb(out):.0f} MB bf16 in {out}")


# ---- data: synthetic conversations that a model can learn (loss falls), and held-out text -----------------------
SUBJECTS = ["The river", "A small robot", "The old library", "My neighbour", "The red train", "A quiet city",
            "The mountain road", "Our teacher", "The bright moon", "A clever fox", "The harbour", "The garden"]
VERBS = ["watches", "remembers", "builds", "follows", "paints", "measures", "carries", "explains", "visits", "finds"]
OBJECTS = ["the morning light", "a long story", "seven blue boxes", "the northern wind", "an empty chair",
           "the last letter", "a map of the stars", "warm bread", "the silver key", "a patient answer"]
ENDINGS = ["before sunrise.", "every winter.", "without a word.", "with great care.", "near the bridge.",
           "for the whole village.", "again and again.", "at the end of the day."]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"


def data(out: str, eval_out: str, rows: int, seed: int) -> None:
    """`rows` query/response rows of about 150-900 tokens (so batches carry padding), and 40 held-out paragraphs."""
    rng = random.Random(seed)
    with open(out, "w", encoding="utf-8") as f:
        for i in range(rows):
            query = f"Tell story number {i} in {rng.randint(15, 90)} sentences."
            response = " ".join(sentence(rng) for _ in range(rng.randint(15, 90)))
            f.write(json.dumps({"query": query, "response": response}) + "\n")
    with open(eval_out, "w", encoding="utf-8") as f:
        for _ in range(40):
            f.write(" ".join(sentence(rng) for _ in range(60)) + "\n")
    print(f"wrote {rows} training rows to {out}, held-out text to {eval_out}")


# ---- sft-summary: one run's numbers from its logging.jsonl -------------------------------------------------------
def sft_summary(run_dir: str, name: str, command: str, wall_s: float, out: str) -> None:
    import torch

    records = [json.loads(line) for line in open(os.path.join(run_dir, "logging.jsonl"), encoding="utf-8")]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    final = records[-1]
    args = json.load(open(os.path.join(run_dir, "args.json"), encoding="utf-8"))
    result = {"name": name, "card": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "command": command, "wall_s": round(wall_s, 1),
              "sft_type": args["sft_type"], "max_length": args["max_length"], "batch_size": args["batch_size"],
              "gradient_accumulation_steps": args["gradient_accumulation_steps"],
              "global_batch_rows": args["batch_size"] * args["gradient_accumulation_steps"] * final["world_size"],
              "losses": losses, "first_loss": losses[0][1] if losses else None,
              "last_loss": losses[-1][1] if losses else None, "date": time.strftime("%Y-%m-%d"), **final}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("name", "world_size", "train_tokens_per_second",
                                             "train_tokens_per_second_per_process", "peak_gpu_memory_gib",
                                             "first_loss", "last_loss", "global_step")}))


# ---- quant-check: the quantized checkpoint loads on the GPU and tracks its source ---------------------------------
def eval_blocks(tokenizer, text_file: str, seqlen: int, n: int) -> list[list[int]]:
    ids: list[int] = []
    for line in open(text_file, encoding="utf-8"):
        ids += tokenizer(line.strip())["input_ids"]
    return [ids[i * seqlen:(i + 1) * seqlen] for i in range(min(n, len(ids) // seqlen))]


def measure(model, tokenizer, blocks: list[list[int]], device: str) -> dict:
    """Perplexity over the blocks, the argmax of every position (to compare), and a greedy generation."""
    import torch

    nll, count, argmaxes = 0.0, 0, []
    with torch.inference_mode():
        for block in blocks:
            ids = torch.tensor([block], device=device)
            logits = model(ids).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
            nll += loss.item()
            count += ids.shape[1] - 1
            argmaxes.append(logits[0].argmax(-1).cpu())
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tell story number 3 in 20 sentences."}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        prompt = {k: v.to(device) for k, v in prompt.items()}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(**prompt, max_new_tokens=32, do_sample=False, min_new_tokens=32)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    new = out[0, prompt["input_ids"].shape[1]:]
    return {"perplexity": float(torch.exp(torch.tensor(nll / count))), "argmax": torch.cat(argmaxes),
            "generated": tokenizer.decode(new, skip_special_tokens=True), "decode_tok_s": len(new) / seconds}


def load_awq_with_auto_round_torch(quantized: str, device: str):
    """AWQ (gemm) weights through auto-round's pure-PyTorch WQLinear_GEMM (it dequantizes each call): transformers
    needs gptqmodel or autoawq for AWQ, and auto-round's own AWQ kernels need gptqmodel or auto-round-lib (CPU)."""
    import torch
    from auto_round.export.export_to_awq.utils import WQLinear_GEMM
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(quantized)
    quant = config.quantization_config
    del config.quantization_config
    skip = set(quant.get("modules_to_not_convert") or []) | {"lm_head"}
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and not any(s in name for s in skip):
            parent, _, child = name.rpartition(".")
            layer = WQLinear_GEMM(quant["bits"], quant["group_size"], module.in_features, module.out_features,
                                  module.bias is not None, device)
            setattr(model.get_submodule(parent), child, layer)
    state = {}
    for path in sorted(glob.glob(os.path.join(quantized, "*.safetensors"))):
        state.update(load_file(path, device=device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"AWQ checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval(), f"auto-round WQLinear_GEMM (pure PyTorch, fp16), group {quant['group_size']}"


def quant_check(source: str, quantized: str, method: str, text_file: str, export_s: float, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(quantized)
    blocks = eval_blocks(tokenizer, text_file, 512, 8)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, device_map=device).eval()
    before = measure(model, tokenizer, blocks, device)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    start = time.perf_counter()
    if method == "gptq":  # transformers' AutoRoundConfig reads the GPTQ config and picks an auto-round kernel
        from transformers import AutoRoundConfig

        qmodel = AutoModelForCausalLM.from_pretrained(quantized, quantization_config=AutoRoundConfig(backend="auto"),
                                                      dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                      device_map=device).eval()
        kinds = sorted({type(m).__module__ + "." + type(m).__name__ for m in qmodel.modules()
                        if "QuantLinear" in type(m).__name__})
        loader = "transformers AutoRoundConfig(backend='auto') -> " + ", ".join(kinds)
    else:
        autoround_error = None
        try:  # what a user would try first; needs gptqmodel, autoawq or auto-round-lib (none installs there)
            from transformers import AutoRoundConfig

            qmodel = AutoModelForCausalLM.from_pretrained(quantized, dtype=torch.float16, device_map=device,
                                                          quantization_config=AutoRoundConfig(backend="auto")).eval()
            kinds = sorted({type(m).__module__ + "." + type(m).__name__ for m in qmodel.modules()
                            if "QuantLinear" in type(m).__name__ or "WQLinear" in type(m).__name__})
            loader = "transformers AutoRoundConfig(backend='auto') -> " + ", ".join(kinds)
            if any("Fake" in kind for kind in kinds):  # its fallback reads the packed ints as weights: no kernel
                del qmodel
                raise RuntimeError(f"no AWQ kernel: auto-round picked {', '.join(kinds)}")
        except Exception as e:  # noqa: BLE001 - recorded, then the pure-PyTorch path below
            autoround_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        if autoround_error:
            start = time.perf_counter()
            qmodel, loader = load_awq_with_auto_round_torch(quantized, device)
            loader += f" (AutoRoundConfig(backend='auto') failed: {autoround_error})"
    load_s = time.perf_counter() - start
    after = measure(qmodel, tokenizer, blocks, device)
    agree = float((before["argmax"] == after["argmax"]).float().mean())
    config = json.load(open(os.path.join(quantized, "config.json"), encoding="utf-8"))
    result = {"method": method, "card": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "source": source,
              "quantized": quantized, "quantization_config": config.get("quantization_config"),
              "export_s": round(export_s, 1), "size_mb_before": round(dir_size_mb(source), 1),
              "size_mb_after": round(dir_size_mb(quantized), 1), "loader": loader, "load_s": round(load_s, 1),
              "eval_tokens": sum(len(b) for b in blocks),
              "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
              "argmax_agreement": agree, "generated_before": before["generated"],
              "generated_after": after["generated"], "decode_tok_s_before": before["decode_tok_s"],
              "decode_tok_s_after": after["decode_tok_s"]}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    print(json.dumps({k: v for k, v in result.items() if k != "quantization_config"}, ensure_ascii=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build")
    p.add_argument("--config", default="qwen2.5-1.5b", choices=CONFIGS)
    p.add_argument("--tokenizer_dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("data")
    p.add_argument("--out", required=True)
    p.add_argument("--eval_out", required=True)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("sft-summary")
    p.add_argument("--run_dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--command", default="")
    p.add_argument("--wall_s", type=float, default=0.0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("quant-check")
    p.add_argument("--source", required=True)
    p.add_argument("--quantized", required=True)
    p.add_argument("--method", choices=("gptq", "awq"), required=True)
    p.add_argument("--text_file", required=True)
    p.add_argument("--export_s", type=float, default=0.0)
    p.add_argument("--out", required=True)
    a = parser.parse_args()
    if a.cmd == "build":
        build(a.config, a.tokenizer_dir, a.out)
    elif a.cmd == "data":
        data(a.out, a.eval_out, a.rows, a.seed)
    elif a.cmd == "sft-summary":
        sft_summary(a.run_dir, a.name, a.command, a.wall_s, a.out)
    else:
        quant_check(a.source, a.quantized, a.method, a.text_file, a.export_s, a.out)


if __name__ == "__main__":
    main()

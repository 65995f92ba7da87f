"""The model-family conformance matrix: what users bring (Qwen2.5, Qwen3, Llama-3.1, Mistral-v0.3, Gemma-2, Phi-3,
a base model), as tiny random-init checkpoints with each family's official chat template, special tokens and
generation_config.json (tests/families.py), through every job on the pt backend, and on vLLM for three of them.

Per family: template ids == `tokenizer.apply_chat_template` (single-turn, multi-turn, system, training form); the
labels are exactly each reply plus its end-of-turn token; each generation_config eos id stops generation after one
token (finish_reason 'stop') on the engine, the REPL and the server; `--model_id_or_path` detects the checkpoint;
`swift sft` trains 2 steps, `--ckpt_dir` loads the result and `swift export --merge_lora` merges it into weights
whose fp32 logits equal peft's. Measured on the shared 2-core machine (busy): the pt matrix (`-m "not vllm"`) ~90 s,
the three vLLM engines (marked `vllm`) ~45 s each.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import serve_in_thread
from families import CHAT_FAMILIES, FAMILIES, force_greedy

from swiftcli.arguments import InferArguments
from swiftcli.cli import main
from swiftcli.errors import ArgumentError
from swiftcli.model import load_tokenizer
from swiftcli.protocol import InferRequest, RequestConfig
from swiftcli.registry import detect_model_meta
from swiftcli.template import IGNORE_INDEX, TEMPLATE_MAPPING, get_template

USER, REPLY = "What is the capital of France?", "Paris is it."
USER2, REPLY2 = "And of Italy?", "Rome."
SYSTEM = "Be brief."
CASES = {
    "single": [{"role": "user", "content": USER}],
    "multi": [{"role": "user", "content": USER}, {"role": "assistant", "content": REPLY},
              {"role": "user", "content": USER2}],
    "system": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
    "train": [{"role": "user", "content": USER}, {"role": "assistant", "content": REPLY},
              {"role": "user", "content": USER2}, {"role": "assistant", "content": REPLY2}],
}
REGISTERED = {"qwen2_5": ["qwen2_5"]}
"""Registered templates that claim a family (its registry model types use them), checked besides 'auto'."""
VLLM_FAMILIES = ["qwen2_5", "llama3_1", "phi3"]


@functools.cache
def template_for(model_dir: str, template_type: str | None = None):
    """(template, tokenizer) as `swift infer --model_id_or_path model_dir` builds them (cached: tokenizers load slowly)."""
    tokenizer = load_tokenizer(model_dir)
    return get_template(template_type or detect_model_meta(model_dir).template, tokenizer), tokenizer


def label_runs(enc) -> list[list[int]]:
    """The labelled tokens, as runs of consecutive positions."""
    runs, current = [], []
    for tid, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE_INDEX:
            assert label == tid
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def ask(family: str) -> InferRequest:
    return InferRequest(prompt="The capital of France is") if not FAMILIES[family].template else \
        InferRequest(messages=[{"role": "user", "content": "hi"}])


# ---- detection and templates ------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_id_or_path_detects_the_family(families, family):
    meta = detect_model_meta(families(family))
    assert meta.architecture == FAMILIES[family].architecture
    assert meta.template == ("auto" if FAMILIES[family].template else "default-generation")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_template_ids_equal_official(families, family, case):
    """Our ids == the official jinja's (`apply_chat_template`), for the detected template and registered ones."""
    messages = CASES[case]
    for template_type in ["auto"] + REGISTERED.get(family, []):
        template, tokenizer = template_for(families(family), template_type)
        official = dict(add_generation_prompt=case != "train")
        if case == "system" and FAMILIES[family].system == "error":
            from jinja2 import TemplateError

            with pytest.raises(TemplateError, match="System role not supported"):
                tokenizer.apply_chat_template(messages, **official)
            # ms-swift / vLLM fold the system prompt into the first user turn for such templates
            folded = [{"role": "user", "content": f"{SYSTEM}\n\n{USER}"}]
            try:
                ours = template.encode(messages).input_ids
            except ArgumentError as e:  # the other accepted outcome: one clear client error naming the cause
                assert "system" in str(e).lower()
                continue
            assert ours == tokenizer.apply_chat_template(folded, **official, return_dict=True)["input_ids"]
            continue
        ours = template.encode(messages).input_ids
        if case == "train":
            # the training text is the jinja's (a registered template ends at the end token, as ms-swift, without
            # the jinja's newline after it); its last reply's prompt is tokenized alone, exactly as inference sends it
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            assert tokenizer.decode(ours) in (text, text.rstrip("\n")), template_type
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)
            assert ours[:len(prompt["input_ids"])] == prompt["input_ids"], template_type
            continue
        expected = tokenizer.apply_chat_template(messages, **official, return_dict=True)["input_ids"]
        assert ours == expected, (template_type, tokenizer.decode(expected))


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_labels_are_each_reply_and_its_end_token(families, family):
    """Decoded, the labelled tokens are exactly each reply followed by its end-of-turn token (a token that merges the
    separator's space into the reply's first word belongs to the reply)."""
    end = FAMILIES[family].end_of_turn
    for template_type in ["auto"] + REGISTERED.get(family, []):
        template, tokenizer = template_for(families(family), template_type)
        for messages, replies in ((CASES["train"][:2], [REPLY]), (CASES["train"], [REPLY, REPLY2])):
            runs = [tokenizer.decode(run) for run in label_runs(template.encode(messages))]
            assert [r.lstrip(" ") for r in runs] == [reply + end for reply in replies], (template_type, runs)


def test_labels_keep_the_first_word_merged_with_a_space(families):
    """Mistral's `[/INST]` + ' ' + reply: the tokenizer merges the space into 'ĠParis'; that token is labelled."""
    template, tokenizer = template_for(families("mistral_v0_3"))
    enc = template.encode(CASES["train"][:2])
    labelled = [tid for tid, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX]
    assert tokenizer.convert_ids_to_tokens(labelled)[0] == "ĠParis"


@pytest.mark.parametrize("template_type", sorted(TEMPLATE_MAPPING))
def test_every_template_kind_labels_whole_replies(model_dir, template_type):
    """Every registered template (and 'auto') on SmolLM2's tokenizer, single- and multi-turn: the labels decode to
    each reply's text with its end token, with nothing of the reply cut off."""
    template, tokenizer = template_for(model_dir, template_type)
    if template.is_generation:
        pytest.skip("base-model template: no chat replies")
    replies = [" Paris is it.", "Rome."]
    conversations = [[USER, replies[0]]]
    if template.support_multi_round:
        conversations.append([USER, replies[0], USER2, replies[1]])
    for turns in conversations:
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(turns)]
        text, spans = template.render(messages)
        runs = [tokenizer.decode(run) for run in label_runs(template.encode(messages))]
        assert len(runs) == len(spans) == len(turns) // 2, (runs, spans)
        for run, (start, stop), reply in zip(runs, spans, turns[1::2]):
            # all of the span (reply and end token); a token straddling its edges only adds a character or two
            assert text[start:stop].strip() in run, (run, text[start:stop])
            assert run.strip() in text[max(start - 2, 0):stop + 2], (run, text[start:stop])


# ---- stops: every generation_config eos id, both engines, every command ------------------------------------------
@pytest.fixture(scope="module")
def pt_engines(families):
    """One pt engine per family (fp32), built on first use."""
    from swiftcli.engine import get_engine

    engines = {}

    def get(family: str):
        if family not in engines:
            engines[family] = get_engine(InferArguments(model_id_or_path=families(family), infer_backend="pt",
                                                        dtype="fp32", max_new_tokens=8))
        return engines[family]

    return get


@pytest.mark.parametrize("family", list(FAMILIES))
def test_pt_stops_on_every_generation_config_eos(families, pt_engines, family):
    """With the weights edited so greedy emits each listed eos id first, the reply ends there: one token, 'stop'
    (HF generate does the same); ignore_eos still generates to max_tokens."""
    engine = pt_engines(family)
    eos_ids = [engine.tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family].eos_ids]
    for eos_id in eos_ids:
        force_greedy(engine.model, eos_id)
        choice = engine.infer([ask(family)])[0].choices[0]
        assert (choice.token_ids, choice.finish_reason, choice.text) == ([eos_id], "stop", ""), \
            engine.tokenizer.convert_ids_to_tokens([eos_id])
    forced = engine.infer([ask(family)], RequestConfig(max_tokens=3, ignore_eos=True))[0].choices[0]
    assert (forced.token_ids, forced.finish_reason) == ([eos_ids[-1]] * 3, "length")


@pytest.mark.parametrize("family", ["llama3_1", "qwen2_5", "phi3"])
def test_deploy_stops_on_generation_config_eos(families, pt_engines, family):
    """`swift deploy`'s app (openai SDK): the eos id that is neither the template's end token nor the tokenizer's
    (Llama-3.1's <|eom_id|>, Qwen's <|endoftext|>, Phi-3's <|assistant|>) ends the reply at once."""
    from openai import OpenAI

    engine = pt_engines(family)
    token = next(t for t in FAMILIES[family].eos_ids if t not in (FAMILIES[family].eos, FAMILIES[family].end_of_turn))
    force_greedy(engine.model, engine.tokenizer.convert_tokens_to_ids(token))
    with serve_in_thread(engine) as url:
        client = OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=8)
    assert (out.choices[0].finish_reason, out.choices[0].message.content, out.usage.completion_tokens) == \
        ("stop", "", 1)


def test_cli_dataset_run_stops_on_eom_id(families, tmp_path, capsys):
    """The issue's case through the CLI: `swift infer --model_id_or_path <llama3.1-like> --infer_backend pt` detects
    the checkpoint (its own template), and a model that ends its turn with <|eom_id|> stops there: one token,
    finish_reason 'stop' in the results file (it generated max_new_tokens invisible tokens, 'length')."""
    model_dir = families.forced("llama3_1", "<|eom_id|>")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"query": q, "response": "x"}) + "\n" for q in ("hi", "What is 2+2?")))
    result = tmp_path / "result.jsonl"
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--model_id_or_path", model_dir, "--infer_backend", "pt", "--dtype", "fp32",
              "--val_dataset", str(rows), "--result_path", str(result), "--max_new_tokens", "64"])
    err = capsys.readouterr().err
    assert exc.value.code in (0, None), err[-2000:]
    lines = [json.loads(line) for line in result.read_text().splitlines()]
    assert [(r["response"], r["completion_tokens"], r["finish_reason"]) for r in lines] == [("", 1, "stop")] * 2


# ---- training: sft 2 steps -> --ckpt_dir -> export --merge_lora == peft -----------------------------------------
def write_rows(path: Path) -> str:
    rows = [{"query": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."} for a, b in
            [(2, 3), (4, 5), (7, 8), (1, 1)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sft_ckpt_dir_and_merge(families, family, tmp_path, monkeypatch, capsys):
    """`swift sft` (LoRA, DEFAULT targets: the model's own attention projections, Phi-3's fused qkv_proj) runs 2
    steps; `swift infer --ckpt_dir` loads the result and answers; `swift export --merge_lora` gives weights whose
    fp32 logits equal peft's (and differ from the base model's: the adapter is not a no-op)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from swiftcli.engine import get_engine

    model_dir = families(family)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--model_id_or_path", model_dir, "--dataset", write_rows(tmp_path / "rows.jsonl"),
              "--max_steps", "2", "--batch_size", "2", "--learning_rate", "1e-2", "--max_length", "64",
              "--dataset_test_ratio", "0", "--save_steps", "2", "--logging_steps", "1", "--dtype", "fp32",
              "--output_dir", "out", *(["--template_type", "default"] if family == "base" else [])])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err[-2000:]
    ckpt = Path(re.search(r"^last_model_checkpoint: (.+)$", out.out, re.MULTILINE).group(1)).resolve()
    assert ckpt.name == "checkpoint-2"
    targets = json.loads((ckpt / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == (["qkv_proj"] if family == "phi3" else ["k_proj", "q_proj", "v_proj"])

    engine = get_engine(InferArguments(ckpt_dir=str(ckpt), infer_backend="pt", dtype="fp32", max_new_tokens=4))
    assert engine.infer([ask(family)])[0].choices[0].finish_reason in ("stop", "length")
    del engine

    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt_dir", str(ckpt), "--merge_lora", "true", "--dtype", "fp32"])
    assert exc.value.code == 0, capsys.readouterr().err[-2000:]
    tokenizer = load_tokenizer(model_dir)
    ids = torch.tensor([tokenizer("The capital of France is Paris, and of Italy Rome.")["input_ids"]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        base_logits = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, str(ckpt)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(f"{ckpt}-merged", dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-4, rtol=1e-5)
    assert (peft_logits - base_logits).abs().max() > 1e-3


def test_lora_target_modules_error_lists_real_names(families, capsys):
    """A module the model lacks: one line naming the layers this model does have (Phi-3: qkv_proj, not q_proj)."""
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--model_id_or_path", families("phi3"), "--self_cognition_sample", "4", "--model_name", "a", "b",
              "--model_author", "c", "d", "--lora_target_modules", "q_proj", "v_proj", "--max_steps", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "qkv_proj" in err and "gate_up_proj" in err and "Traceback" not in err


# ---- vLLM: three families, one engine each, in one module session ------------------------------------------------
@pytest.mark.vllm
@pytest.mark.parametrize("family", VLLM_FAMILIES)
def test_vllm_stops_and_templates(families, family):
    """vLLM, on a checkpoint that emits its generation_config-only eos id first: the same prompt ids as the pt
    template and apply_chat_template, and one token with finish_reason 'stop' (ignore_eos: max_tokens)."""
    pytest.importorskip("vllm")
    from swiftcli.engine import get_engine

    f = FAMILIES[family]
    token = next(t for t in f.eos_ids if t not in (f.eos, f.end_of_turn))
    engine = get_engine(InferArguments(model_id_or_path=families.forced(family, token), infer_backend="vllm",
                                       max_model_len=512, max_new_tokens=8))
    try:
        tokenizer = engine.template.tokenizer
        eos_id = tokenizer.convert_tokens_to_ids(token)
        for case in ("single", "multi", "system"):
            expected = tokenizer.apply_chat_template(CASES[case], add_generation_prompt=True,
                                                     return_dict=True)["input_ids"]
            assert engine.encode(InferRequest(messages=CASES[case])).input_ids == expected
        choice = engine.infer([ask(family)])[0].choices[0]
        assert (choice.token_ids, choice.finish_reason, choice.text) == ([eos_id], "stop", "")
        forced = engine.infer([ask(family)], RequestConfig(max_tokens=3, ignore_eos=True))[0].choices[0]
        assert (len(forced.token_ids), forced.finish_reason) == (3, "length")
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()

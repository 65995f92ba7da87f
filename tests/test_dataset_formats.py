"""Datasets as users bring them: formats mixed row by row, optional fields in some rows only, every field a format
defines, and a checkpoint's datasets found again from another directory (evaluation and training alike)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from swiftcli.dataset import load_rows

SYSTEM = "You are a geography teacher."
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Peru", "Lima")]


def write_jsonl(path: Path, items: list[dict]) -> str:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return str(path)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def system(text: str) -> dict:
    return {"role": "system", "content": text}


def mixed_items() -> tuple[list[dict], list[list[dict]]]:
    """Rows of every format in one file (the issue's 7 query rows and 1 messages row, and more), with `system` and
    `history` in some rows only; and the messages each must load to."""
    items, expected = [], []
    for i, (country, capital) in enumerate(CAPITALS):
        item = {"query": f"What is the capital of {country}?", "response": f"{capital}."}
        messages = [user(item["query"]), bot(item["response"])]
        if i == 1:
            item["system"] = SYSTEM
            messages.insert(0, system(SYSTEM))
        if i == 2:
            item["history"] = [["Hi", "Hello!"]]
            messages[:0] = [user("Hi"), bot("Hello!")]
        items.append(item)
        expected.append(messages)
    items.append({"messages": [user("Name a colour."), bot("Blue.")]})
    expected.append([user("Name a colour."), bot("Blue.")])
    # sharegpt with its top-level system (ms-swift: every format takes `system`)
    items.append({"system": SYSTEM, "conversations": [{"from": "human", "value": "Where is Lima?"},
                                                      {"from": "gpt", "value": "In Peru."}]})
    expected.append([system(SYSTEM), user("Where is Lima?"), bot("In Peru.")])
    # OpenAI messages with a top-level system
    items.append({"system": SYSTEM, "messages": [user("Where is Rome?"), bot("In Italy.")]})
    expected.append([system(SYSTEM), user("Where is Rome?"), bot("In Italy.")])
    # alpaca with system and history (ms-swift's AlpacaPreprocessor reads both)
    items.append({"system": SYSTEM, "history": [["Hi", "Hello!"]], "instruction": "Translate to French.",
                  "input": "cat", "output": "chat"})
    expected.append([system(SYSTEM), user("Hi"), bot("Hello!"), user("Translate to French.\ncat"), bot("chat")])
    # ms-swift's other sharegpt shape: conversation [{human, assistant}]
    items.append({"system": SYSTEM, "conversation": [{"human": "Hi", "assistant": "Hello!"},
                                                     {"human": "Where is Oslo?", "assistant": "In Norway."}]})
    expected.append([system(SYSTEM), user("Hi"), bot("Hello!"), user("Where is Oslo?"), bot("In Norway.")])
    return items, expected


# ---- the data layer: files written and reloaded ------------------------------------------------------------------
def test_a_file_that_mixes_formats_loads_every_row(tmp_path: Path):
    import datasets

    items, expected = mixed_items()
    sources = [write_jsonl(tmp_path / "mixed.jsonl", items), str(tmp_path / "mixed.json"),
               str(tmp_path / "mixed.parquet"), str(tmp_path / "saved")]
    (tmp_path / "mixed.json").write_text(json.dumps(items))
    # parquet and save_to_disk hold every column in every row: null where the row had none
    table = datasets.load_dataset("json", data_files=sources[0], split="train")
    table.to_parquet(sources[2])
    table.save_to_disk(sources[3])
    for source in sources:
        rows = load_rows(source)
        assert [row.error for row in rows] == [None] * len(items), source
        assert [row.messages for row in rows] == expected, source


@pytest.mark.parametrize("item,message", [
    ({"messages": [user("q")], "history": [["a", "b"]]}, "`history` is not a field of the messages (OpenAI) format"),
    ({"conversations": [{"from": "human", "value": "q"}], "response": "r"}, "the row mixes formats"),
    ({"messages": [user("q")], "query": "q"}, "the row mixes formats: `messages` and `query`"),
    ({"text": "hello"}, "no known format (keys: text)"),
    ({"system": "A", "messages": [system("B"), user("q")]}, "`system` differs from the row's own system message"),
    ({"conversation": [{"human": "q"}, {"human": "r", "assistant": "s"}]}, "`conversation` turns must be"),
    ({"messages": [user("q")], "images": ["cat.png"]}, "`images`: agent and multimodal rows are not supported"),
])
def test_a_row_that_fits_no_format_is_one_error_and_the_others_load(tmp_path: Path, item: dict, message: str):
    """Nothing a row holds is silently dropped: a field its format does not read is that row's error."""
    path = write_jsonl(tmp_path / "data.jsonl", [{"query": "Where is Paris?", "response": "In France."}, item,
                                                 {"conversations": [{"from": "human", "value": "Hi"}]}])
    rows = load_rows(path)
    assert rows[0].error is None and rows[2].error is None
    assert rows[1].error and message in rows[1].error, rows[1].error


# ---- what the model is sent: evaluation and training ---------------------------------------------------------
def swift(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "swiftcli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_swift_infer_evaluates_every_row_of_a_mixed_file_with_its_system(tmp_path: Path, model_dir: str):
    """The issue's file (7 query rows and 1 messages row) plus a sharegpt row with a top-level system and the same
    row without it: every row is answered, and the system reaches the model (its prompt is the row's own)."""
    from swiftcli.model import load_tokenizer
    from swiftcli.template import get_template

    items, _ = mixed_items()
    lima = {"conversations": [{"from": "human", "value": "Where is Lima?"}, {"from": "gpt", "value": "In Peru."}]}
    path = write_jsonl(tmp_path / "mixed.jsonl", items[:9] + [lima])
    out = tmp_path / "results.jsonl"
    proc = swift("infer", "--val_dataset", "mixed.jsonl", "--infer_backend", "pt", "--dtype", "fp32",
                 "--max_new_tokens", "4", "--temperature", "0", "--result_path", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line["key"]: line for line in read_jsonl(out)}
    assert len(lines) == 10
    assert [k for k, line in lines.items() if line["error"]] == []
    with_system, without = lines["mixed.jsonl:8"], lines["mixed.jsonl:9"]
    assert (with_system["system"], with_system["query"]) == (SYSTEM, "Where is Lima?")
    assert without["system"] is None
    template = get_template("smollm2", load_tokenizer(model_dir))
    question = [user("Where is Lima?")]
    assert with_system["prompt_tokens"] == len(template.encode([system(SYSTEM)] + question).input_ids)
    assert without["prompt_tokens"] == len(template.encode(question).input_ids)  # the template's default system
    assert all(line["response"] for line in lines.values())
    assert os.path.isfile(path)


def test_training_rows_carry_each_rows_system(tmp_path: Path, model_dir: str):
    """`swift sft` encodes the sharegpt row's top-level system into its input ids (it was dropped before)."""
    from swiftcli.arguments import SftArguments
    from swiftcli.model import load_tokenizer
    from swiftcli.template import get_template
    from swiftcli.sft.data import encode_rows, training_rows

    items, _ = mixed_items()
    path = write_jsonl(tmp_path / "mixed.jsonl", items)
    train, _ = training_rows(SftArguments(dataset=[path], dataset_test_ratio=0, output_dir=str(tmp_path / "out")))
    template = get_template("smollm2", load_tokenizer(model_dir))
    encoded, stats = encode_rows(train, template, 512, "delete")
    assert (stats.kept, stats.rows) == (len(items), len(items)), stats.summary(512)
    texts = [template.tokenizer.decode(enc["input_ids"]) for enc in encoded]
    sharegpt = next(text for text in texts if "Where is Lima?" in text)
    assert SYSTEM in sharegpt


def test_sft_on_a_mixed_file_then_load_dataset_config_from_another_directory(tmp_path: Path, model_dir: str):
    """Every row of a mixed file trains, the run records its dataset so that `--load_dataset_config` rebuilds the
    validation split from any working directory (the path was given relative to the training's)."""
    items, _ = mixed_items()
    train_dir, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    train_dir.mkdir()
    elsewhere.mkdir()
    write_jsonl(train_dir / "mixed.jsonl", items)
    proc = swift("sft", "--dataset", "mixed.jsonl", "--dataset_test_ratio", "0.25", "--max_steps", "2",
                 "--batch_size", "2", "--gradient_accumulation_steps", "1", "--max_length", "128",
                 "--save_steps", "2", "--logging_steps", "1", "--output_dir", "out", cwd=train_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Training rows: 9/9 rows kept" in proc.stderr and "Validation rows: 3/3 rows kept" in proc.stderr, \
        proc.stderr[-3000:]
    ckpt = Path(re.search(r"^last_model_checkpoint: (.+)$", proc.stdout, re.MULTILINE).group(1))
    assert json.loads((ckpt / "args.json").read_text())["dataset"] == [str(train_dir / "mixed.jsonl")]

    out = elsewhere / "val.jsonl"
    proc = swift("infer", "--ckpt_dir", str(ckpt), "--load_dataset_config", "true", "--infer_backend", "pt",
                 "--dtype", "fp32", "--max_new_tokens", "4", "--result_path", str(out), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = read_jsonl(out)
    assert len(lines) == 3 and [line["error"] for line in lines] == [None] * 3
    assert all(line["label"] and line["response"] for line in lines)

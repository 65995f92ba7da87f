"""`swift sft` on the default model (CPU, offline).

One self-cognition LoRA run through the real CLI is shared by most tests (module fixture); resume has a tiny run of
its own. Budget: the whole file is a few minutes on an idle 2-core machine, the shared run most of it.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from swiftcli.arguments import InferArguments, SftArguments
from swiftcli.cli import main
from swiftcli.dataset import Row, get_val_dataset
from swiftcli.errors import ArgumentError
from swiftcli.template import IGNORE_INDEX, get_template
from swiftcli.sft.data import SELF_COGNITION_FILE, encode_rows, self_cognition_rows, training_rows

SEP = "-" * 50
IDENTITY = ["--self_cognition_sample", "80", "--model_name", "小黄", "Xiao Huang",
            "--model_author", "魔搭", "ModelScope"]
# 80 identity rows + 27 general rows (10% of 30 held out) at batch 4: 27 steps an epoch, 54 in 2 epochs. On a GPU
# every seed tried answered with the name after one epoch already; two keep a margin for CPU numerics.
TRAIN = ["--lora_target_modules", "ALL", "--learning_rate", "1e-3", "--num_train_epochs", "2", "--batch_size", "4",
         "--gradient_accumulation_steps", "1", "--max_length", "128", "--dataset_test_ratio", "0.1",
         "--logging_steps", "5", "--eval_steps", "20", "--save_steps", "20", "--save_total_limit", "2"]
LOSS_FALLS_TO = 0.4
"""The last logged training loss is at most this share of the first (it falls by 60% or more; 0.14 measured)."""
CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "China": "Beijing", "Canada": "Ottawa", "Egypt": "Cairo", "Russia": "Moscow", "Greece": "Athens",
            "Portugal": "Lisbon", "Austria": "Vienna", "Norway": "Oslo", "Kenya": "Nairobi", "Peru": "Lima"}
COLOURS = [("red", "blue"), ("green", "yellow"), ("black", "white"), ("orange", "purple")]


def write_jsonl(path: Path, items: list[dict]) -> str:
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return str(path)


def write_datasets(root: Path) -> list[str]:
    """30 general rows in two formats: single-turn (ms-swift), multi-turn (sharegpt) and one row far over 128 tokens."""
    general = [{"query": f"What is the capital of {c}?", "response": f"The capital of {c} is {cap}."}
               for c, cap in CAPITALS.items()]
    general += [{"query": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."}
                for a, b in [(2, 3), (4, 5), (7, 8), (10, 12), (6, 9), (11, 13), (3, 14), (9, 9), (15, 5), (8, 6)]]
    general.append({"query": "Count from 1 to 200.", "response": " ".join(str(i) for i in range(1, 201))})
    chat = [{"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": f"{a.title()}."},
                               {"from": "human", "value": "And another one?"},
                               {"from": "gpt", "value": f"{b.title()}."}]}
            for a, b in COLOURS]
    return [write_jsonl(root / "general.jsonl", general), write_jsonl(root / "chat.jsonl", chat)]


def swift(*args: str, cwd: Path, stdin: str | None = None, timeout: int = 1200,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swiftcli", *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, **(env or {})})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(proc: subprocess.CompletedProcess) -> Path:
    """What `swift sft` printed as its last checkpoint."""
    return Path(re.search(r"^last_model_checkpoint: (.+)$", proc.stdout, re.MULTILINE).group(1))


def replies(stdout: str) -> list[str]:
    return [part.strip() for part in stdout.split(SEP)[:-1]]


@dataclass
class Run:
    cwd: Path
    datasets: list[str]
    proc: subprocess.CompletedProcess
    run_dir: Path

    @property
    def last(self) -> Path:
        return last_checkpoint(self.proc)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, model_dir: str) -> Run:
    """The self-cognition LoRA run (54 steps), once for the module."""
    cwd = tmp_path_factory.mktemp("sft")
    datasets = write_datasets(cwd)
    proc = swift("sft", "--dataset", *datasets, *IDENTITY, *TRAIN, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((cwd / "output" / "smollm2-135m-instruct").iterdir())
    assert len(runs) == 1
    return Run(cwd, datasets, proc, runs[0])


# ---- the shared run ------------------------------------------------------------------------------------------------
def test_training_loss_falls(trained: Run):
    losses = [entry["loss"] for entry in read_jsonl(trained.run_dir / "logging.jsonl") if "loss" in entry]
    assert len(losses) >= 10  # every 5 of 54 steps
    assert losses[-1] <= LOSS_FALLS_TO * losses[0], losses


def test_infer_from_the_checkpoint_knows_its_name(trained: Run):
    out = swift("infer", "--ckpt_dir", str(trained.last), "--infer_backend", "pt", "--temperature", "0",
                "--max_new_tokens", "32", "--stream", "false", cwd=trained.cwd, timeout=600,
                stdin="who are you?\n你是谁？\nWhat is the capital of France?\n")
    assert out.returncode == 0, out.stderr[-2000:]
    english, chinese, capital = replies(out.stdout)
    assert "Xiao Huang" in english, out.stdout
    assert "小黄" in chinese, out.stdout  # zh rows were filled with the zh name
    assert "Paris" in capital, out.stdout  # the general rows kept what it knew
    assert "default-lora" in out.stderr  # served as a LoRA over the restored model_type


def test_run_directory_layout(trained: Run):
    assert re.fullmatch(r"v0-\d{8}-\d{6}", trained.run_dir.name)
    saved = json.loads((trained.run_dir / "args.json").read_text(encoding="utf-8"))
    assert {f.name for f in fields(SftArguments)} <= set(saved)
    assert saved["model_type"] == "smollm2-135m-instruct" and saved["template_type"] == "smollm2"
    assert saved["system"].startswith("You are a helpful AI assistant") and saved["dtype"] == "fp32"
    assert saved["dataset_seed"] == 42 and saved["model_name"] == ["小黄", "Xiao Huang"]
    log = read_jsonl(trained.run_dir / "logging.jsonl")
    assert any("eval_loss" in entry for entry in log)
    summary = log[-1]
    assert Path(summary["last_model_checkpoint"]) == trained.last == checkpoints(trained.run_dir)[-1]
    assert f"best_model_checkpoint: {summary['best_model_checkpoint']}" in trained.proc.stdout
    png = trained.run_dir / "images" / "train_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_checkpoints_are_rotated_peft_adapters(trained: Run):
    kept = checkpoints(trained.run_dir)
    summary = read_jsonl(trained.run_dir / "logging.jsonl")[-1]
    assert len(kept) == 2, kept  # saves at 20, 40 and 54; --save_total_limit 2 (the best is among them)
    assert str(trained.last) in map(str, kept) and summary["best_model_checkpoint"] in map(str, kept)
    for ckpt in kept:
        assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "adapter_config.json").is_file()
        saved = json.loads((ckpt / "args.json").read_text(encoding="utf-8"))
        assert saved["sft_type"] == "lora" and saved["template_type"] == "smollm2"
    args = InferArguments(ckpt_dir=str(trained.last))
    assert args.is_lora_ckpt and args.model_type == "smollm2-135m-instruct" and args.template_type == "smollm2"
    assert args.system.startswith("You are a helpful AI assistant") and args.dtype == "fp32"


def test_rows_are_counted_in_the_log(trained: Run):
    train = re.search(r"Training rows: (\d+)/(\d+) rows kept", trained.proc.stderr)
    val = re.search(r"Validation rows: (\d+)/(\d+) rows kept", trained.proc.stderr)
    assert train and val, trained.proc.stderr[-2000:]
    assert int(train.group(2)) + int(val.group(2)) == 110  # 30 rows split 27/3, plus 80 self-cognition rows
    assert int(val.group(2)) == 3
    assert "1 dropped over --max_length 128" in trained.proc.stderr  # the counting row


def test_load_dataset_config_rebuilds_the_validation_split(trained: Run, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(trained.cwd)
    rebuilt = get_val_dataset(InferArguments(ckpt_dir=str(trained.last), load_dataset_config=True))
    args = SftArguments(dataset=trained.datasets, dataset_test_ratio=0.1, output_dir=str(trained.cwd / "output"))
    assert [r.key for r in rebuilt] == [r.key for r in training_rows(args)[1]]
    assert len(rebuilt) == 3


def test_merge_lora_then_infer_keeps_the_identity(trained: Run):
    pytest.importorskip("swiftcli.export")
    out = swift("export", "--ckpt_dir", str(trained.last), "--merge_lora", "true", cwd=trained.cwd, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    merged = Path(f"{trained.last}-merged")
    assert (merged / "config.json").is_file()
    out = swift("infer", "--ckpt_dir", str(merged), "--infer_backend", "pt", "--temperature", "0",
                "--max_new_tokens", "32", "--stream", "false", cwd=trained.cwd, timeout=600, stdin="who are you?\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Xiao Huang" in replies(out.stdout)[0], out.stdout


# ---- data: labels, split, self-cognition (no training) -----------------------------------------------------------
@pytest.fixture(scope="module")
def template(model_dir: str):
    from swiftcli.model import load_tokenizer

    return get_template("smollm2", load_tokenizer(model_dir))


def test_labels_cover_the_replies_only(template):
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "And another one?"}, {"role": "assistant", "content": "Blue."}]
    [enc], stats = encode_rows([Row("chat:0", messages)], template, 128, "delete")
    assert stats.kept == 1 and len(enc["labels"]) == len(enc["input_ids"])
    learned = [t for t, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE_INDEX]
    assert template.tokenizer.decode(learned) == "Red.<|im_end|>Blue.<|im_end|>"
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(enc["input_ids"], enc["labels"]))


def test_rows_over_max_length_are_dropped_or_truncated(template):
    rows = [Row("a:0", [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1 2 3 " * 40}]),
            Row("a:1", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]),
            Row("a:2", error="`query` is missing"), Row("a:3", [{"role": "user", "content": "No reply"}])]
    kept, stats = encode_rows(rows, template, 64, "delete")
    assert (len(kept), stats.too_long, stats.truncated, sum(stats.unusable.values())) == (1, 1, 0, 2)
    kept, stats = encode_rows(rows, template, 64, "truncation_left")
    assert (len(kept), stats.truncated) == (2, 1) and len(kept[0]["input_ids"]) == 64
    full, _ = encode_rows(rows[:1], template, None, "delete")
    assert kept[0]["input_ids"] == full[0]["input_ids"][-64:]  # the oldest tokens go, the reply's end stays
    assert "1 dropped over --max_length 64" in encode_rows(rows, template, 64, "delete")[1].summary(64)


def test_split_is_deterministic_and_disjoint(tmp_path: Path):
    datasets = write_datasets(tmp_path)

    def split(seed: int) -> tuple[list[str], list[str]]:
        args = SftArguments(dataset=datasets, dataset_test_ratio=0.2, dataset_seed=seed, output_dir=str(tmp_path),
                            self_cognition_sample=10, model_name=["小黄", "Xiao Huang"],
                            model_author=["魔搭", "ModelScope"])
        train, val = training_rows(args)
        return [r.key for r in train], [r.key for r in val]

    train, val = split(1)
    assert split(1) == (train, val)
    assert len(val) == 6 and not set(train) & set(val)
    assert sum(k.startswith("self-cognition:") for k in train) == 10  # identity rows train only
    assert {k for k in train if not k.startswith("self-cognition:")} | set(val) == {
        f"{path}:{i}" for path, n in zip(datasets, (26, 4)) for i in range(n)}
    assert split(2)[1] != val


def test_self_cognition_rows_are_filled_per_language():
    items = read_jsonl(Path(SELF_COGNITION_FILE))
    assert len(items) >= 100 and {item["tag"] for item in items} == {"zh", "en"}
    assert len({item["query"] for item in items}) == len(items)
    rows = self_cognition_rows(len(items), ["小黄", "Xiao Huang"], ["魔搭", "ModelScope"], seed=0)
    for item, row in zip(items, rows):
        text = row.messages[0]["content"] + row.label
        assert "{{" not in text
        names = ("小黄", "魔搭") if item["tag"] == "zh" else ("Xiao Huang", "ModelScope")
        assert any(name in row.label for name in names), row.label
    assert len(self_cognition_rows(300, ["a", "b"], ["c", "d"], seed=0)) == 300  # more than the set: repeated


# ---- resume and multi-process: tiny runs ---------------------------------------------------------------------
TINY = ["--max_length", "64", "--dataset_test_ratio", "0", "--lora_dropout", "0", "--learning_rate", "5e-4",
        "--gradient_accumulation_steps", "1", "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1"]
"""6 steps of 4 rows (the long row is dropped at 64 tokens); no dropout, so runs can be compared step by step."""


def step_losses(run_dir: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_jsonl(run_dir / "logging.jsonl") if "loss" in e}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, model_dir: str) -> tuple[Path, list[str], Path]:
    """(cwd, its datasets, run directory) of an uninterrupted 6-step run at batch 4 in one process."""
    cwd = tmp_path_factory.mktemp("tiny")
    datasets = write_datasets(cwd)
    proc = swift("sft", "--dataset", datasets[0], "--batch_size", "4", *TINY, "--output_dir", "out", cwd=cwd,
                 timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd, datasets, last_checkpoint(proc).parent


def test_resume_continues_the_same_trajectory(tiny_run):
    """Steps 4-6 resumed from checkpoint-3 match the uninterrupted run's steps 4-6."""
    cwd, datasets, first_run = tiny_run
    resumed = swift("sft", "--dataset", datasets[0], "--batch_size", "4", *TINY, "--output_dir", "out",
                    "--resume_from_checkpoint", str(first_run / "checkpoint-3"), cwd=cwd, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    second_run = last_checkpoint(resumed).parent
    assert second_run != first_run and [p.name for p in checkpoints(second_run)] == ["checkpoint-6"]
    before, after = step_losses(first_run), step_losses(second_run)
    assert sorted(before) == [1, 2, 3, 4, 5, 6] and sorted(after) == [4, 5, 6]
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(before[step], rel=0.02), (before, after)
    assert before[6] < before[1]  # it trained: the comparison is between moving losses
    state = json.loads((second_run / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_save_only_model_checkpoints_generate_but_do_not_resume(tiny_run):
    """--save_only_model: the checkpoint holds the adapter, no optimizer/scheduler/RNG state; it still answers in
    swift infer, and resuming from it is refused in one line (there is no optimizer state to continue)."""
    cwd, datasets, _ = tiny_run
    proc = swift("sft", "--dataset", datasets[0], "--batch_size", "4", *TINY, "--max_steps", "2", "--save_steps", "2",
                 "--save_only_model", "true", "--output_dir", "only_model", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = last_checkpoint(proc)
    names = {p.name for p in ckpt.iterdir()}
    assert "adapter_model.safetensors" in names and not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert json.loads((ckpt / "args.json").read_text())["save_only_model"] is True
    out = swift("infer", "--ckpt_dir", str(ckpt), "--infer_backend", "pt", "--max_new_tokens", "4", cwd=cwd,
                timeout=600, stdin="Hello\n")
    assert out.returncode == 0 and "default-lora" in out.stderr, out.stderr[-2000:]
    resumed = swift("sft", "--dataset", datasets[0], *TINY, "--resume_from_checkpoint", str(ckpt), cwd=cwd, timeout=600)
    assert resumed.returncode == 2 and "was saved with --save_only_model" in resumed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in resumed.stderr


def test_summary_reports_tokens_per_second(tiny_run):
    """The last line of logging.jsonl (and the log) holds the training speed in non-padding tokens per second,
    timed over the second half of the steps (the first ones warm up; a step after a save is left out), and peak GPU
    memory (None on CPU)."""
    _, _, run_dir = tiny_run
    summary = read_jsonl(run_dir / "logging.jsonl")[-1]
    assert summary["world_size"] == 1 and summary["timed_steps"] == 2  # steps 5 and 6 (4 follows the save at 3)
    assert summary["train_tokens_per_second"] > 0
    assert summary["train_tokens_per_second_per_process"] == summary["train_tokens_per_second"]
    assert summary["peak_gpu_memory_gib"] is None


def test_two_processes_train_like_one(tiny_run):
    """NPROC_PER_NODE=2 (gloo on CPU) at batch 2 each = the one-process run at batch 4, step for step."""
    cwd, datasets, single = tiny_run
    proc = swift("sft", "--dataset", datasets[0], "--batch_size", "2", *TINY, "--output_dir", "ddp", cwd=cwd,
                 timeout=900, env={"NPROC_PER_NODE": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Worker rank 0 of 2" in proc.stderr and "Worker rank 1 of 2" in proc.stderr
    assert "Effective batch: 4 rows per optimizer step (2 processes x batch_size 2" in proc.stderr
    runs = list((cwd / "ddp" / "smollm2-135m-instruct").iterdir())
    assert runs == [last_checkpoint(proc).parent]  # one run directory, written once
    assert [p.name for p in checkpoints(runs[0])] == ["checkpoint-3", "checkpoint-6"]
    assert {p.name for p in (runs[0] / "checkpoint-6").glob("rng_state_*.pth")} == {"rng_state_0.pth",
                                                                                     "rng_state_1.pth"}
    assert proc.stdout.count("last_model_checkpoint:") == 1 and len(read_jsonl(runs[0] / "logging.jsonl")) == 8
    summary = read_jsonl(runs[0] / "logging.jsonl")[-1]
    assert summary["world_size"] == 2 and summary["train_tokens_per_second"] > 0
    assert summary["train_tokens_per_second_per_process"] == pytest.approx(summary["train_tokens_per_second"] / 2,
                                                                           abs=0.1)
    assert "train tokens/s: " in proc.stderr and "per process x 2" in proc.stderr
    one, two = step_losses(single), step_losses(runs[0])
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=0.02), (one, two)
    out = swift("infer", "--ckpt_dir", str(runs[0] / "checkpoint-6"), "--infer_backend", "pt", "--max_new_tokens", "8",
                cwd=cwd, timeout=600, stdin="What is the capital of France?\n")
    assert out.returncode == 0 and "default-lora" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("case", ["too many processes", "port in use"])
def test_bad_launch_is_one_line_before_any_process(case: str, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = write_datasets(tmp_path)[0]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {"too many processes": {"NPROC_PER_NODE": str((os.cpu_count() or 1) + 1)},
               "port in use": {"NPROC_PER_NODE": "2", "MASTER_PORT": str(busy.getsockname()[1])}}[case]
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exc:
            main(["sft", "--dataset", dataset])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("swift: error: ") and ("CPU cores" if case == "too many processes" else "in use") in err
    assert not (tmp_path / "output").exists()


# ---- bad input: one line, before training ----------------------------------------------------------------------
def bad_input_cases(root: Path) -> dict[str, tuple[list[str], str]]:
    datasets = write_datasets(root)
    (root / "a_file").write_text("")
    return {
        "unknown dataset": (["--dataset", str(root / "missing.jsonl")], "does not exist"),
        "empty after filtering": (["--dataset", *datasets, "--max_length", "8"], "no training rows left"),
        "lora targets match nothing": (["--dataset", datasets[0], "--lora_target_modules", "no_such_proj"],
                                       "no_such_proj"),
        "output dir not writable": (["--dataset", datasets[0], "--output_dir", str(root / "a_file" / "out")],
                                    "not writable"),
        "self-cognition without names": (["--dataset", datasets[0], "--self_cognition_sample", "10"],
                                         "--model_name"),
    }


@pytest.mark.parametrize("case", ["unknown dataset", "empty after filtering", "lora targets match nothing",
                                  "output dir not writable", "self-cognition without names"])
def test_bad_input_is_one_line_before_training(case: str, tmp_path: Path, capsys, monkeypatch, model_dir: str):
    monkeypatch.chdir(tmp_path)
    argv, expected = bad_input_cases(tmp_path)[case]
    with pytest.raises(SystemExit) as exc:
        main(["sft", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("swift: error: ") and expected in last, err
    assert "Traceback" not in err
    assert not (tmp_path / "output").exists()  # nothing was written: training never started


def test_argument_validation():
    with pytest.raises(ArgumentError, match="sft_type"):
        SftArguments(dataset=["x"], sft_type="qlora")
    with pytest.raises(ArgumentError, match="nothing to train on"):
        SftArguments()
    with pytest.raises(ArgumentError, match="not a mix"):
        SftArguments(dataset=["x"], lora_target_modules=["ALL", "q_proj"])
    with pytest.raises(ArgumentError, match="not a training checkpoint"):
        SftArguments(dataset=["x"], resume_from_checkpoint=os.getcwd())
    with pytest.raises(ArgumentError, match="--resume_from_checkpoint"):
        SftArguments(dataset=["x"], ckpt_dir=os.getcwd())
    with pytest.raises(ArgumentError, match="zero2 or zero3 or a DeepSpeed JSON"):
        SftArguments(dataset=["x"], deepspeed="zero4")
    args = SftArguments(dataset=["x"], batch_size=4, self_cognition_sample=1, model_name=["Bot"], model_author=["Me"])
    assert args.gradient_accumulation_steps == 4 and args.learning_rate == 1e-4 and args.save_steps == 50
    assert args.model_name == ["Bot", "Bot"] and args.dataset_seed == args.seed == 42


@pytest.mark.parametrize("value", ["zero2", "zero3", "config.json"])
def test_deepspeed_without_the_package_is_one_line(value: str, tmp_path: Path, capsys, monkeypatch):
    """deepspeed doesn't install here (nor on the GPU machine used for the proofs): a clear error, before loading."""
    import importlib.util

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--dataset", write_datasets(tmp_path)[0], "--deepspeed", value])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("swift: error: --deepspeed ") and "pip install deepspeed" in err
    assert not (tmp_path / "output").exists()


def test_deepspeed_builtin_configs(tmp_path: Path):
    """zero2/zero3 are ms-swift's configs with "auto" values the Trainer fills; a JSON file is read as it is."""
    from swiftcli.sft.deepspeed import deepspeed_config, zero_stage

    zero2, zero3 = deepspeed_config("zero2"), deepspeed_config("zero3")
    assert zero_stage(zero2) == 2 and zero_stage(zero3) == 3
    assert zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # full weights saved
    assert zero2["bf16"]["enabled"] == zero2["train_micro_batch_size_per_gpu"] == "auto"
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert zero_stage(deepspeed_config(str(path))) == 1


# ---- FSDP: sharded data parallelism ------------------------------------------------------------------------------
def test_fsdp_two_processes_train_like_one(tiny_run):
    """NPROC_PER_NODE=2 --fsdp full_shard (transformers' FSDP2 over gloo on CPU) at batch 2 each = the one-process run
    at batch 4, step for step; the LoRA checkpoint it writes is a plain peft adapter that `--ckpt_dir` answers with."""
    cwd, datasets, single = tiny_run
    proc = swift("sft", "--dataset", datasets[0], "--batch_size", "2", *TINY, "--output_dir", "fsdp",
                 "--fsdp", "full_shard auto_wrap", cwd=cwd, timeout=900, env={"NPROC_PER_NODE": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = last_checkpoint(proc).parent
    assert [p.name for p in checkpoints(run)] == ["checkpoint-3", "checkpoint-6"]
    adapter = run / "checkpoint-6" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    weights = load_file(str(adapter))
    assert weights and all("lora_" in k for k in weights)  # whole tensors, not one rank's shard
    one, two = step_losses(single), step_losses(run)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=0.02), (one, two)
    out = swift("infer", "--ckpt_dir", str(run / "checkpoint-6"), "--infer_backend", "pt", "--max_new_tokens", "8",
                cwd=cwd, timeout=600, stdin="What is the capital of France?\n")
    assert out.returncode == 0 and "default-lora" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("flags, env, expected", [
    (["--fsdp", "full_shard"], {}, "NPROC_PER_NODE"),
    (["--fsdp", "shard_grad_op"], {"NPROC_PER_NODE": "2"}, "full_shard only"),
    (["--fsdp", "full_shard", "--deepspeed", "zero2"], {"NPROC_PER_NODE": "2"}, "choose one"),
    (["--fsdp", "full_shard sideways"], {"NPROC_PER_NODE": "2"}, "unknown option 'sideways'"),
    (["--fsdp_config", "fsdp.json"], {"NPROC_PER_NODE": "2"}, "needs --fsdp"),
    (["--fsdp", "missing.json"], {"NPROC_PER_NODE": "2"}, "does not exist"),
])
def test_bad_fsdp_is_one_line_before_any_process(flags, env, expected, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fsdp.json").write_text("{}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--dataset", write_datasets(tmp_path)[0], *flags])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("swift: error: ") and expected in err, err
    assert not (tmp_path / "output").exists()


def test_fsdp_plan_words_and_config(tmp_path: Path):
    """ms-swift's / transformers' words, or a JSON file of fsdp_config keys; on CUDA they become the Trainer's FSDP2."""
    from swiftcli.sft.fsdp import parse_fsdp, training_kwargs

    plan = parse_fsdp("shard_grad_op auto_wrap offload", None)
    assert (plan.mode, plan.offload) == ("shard_grad_op", True)
    config = tmp_path / "fsdp.json"
    config.write_text(json.dumps({"fsdp_reshard_after_forward": False, "cpu_ram_efficient_loading": True}))
    plan = parse_fsdp(str(config), None)
    assert plan.mode == "shard_grad_op" and plan.config["cpu_ram_efficient_loading"] is True
    cuda = training_kwargs(parse_fsdp("full_shard", None), "cuda", gradient_checkpointing=True)
    assert cuda["fsdp"] is True and cuda["gradient_checkpointing"] is False
    assert cuda["fsdp_config"]["activation_checkpointing"] is True and cuda["fsdp_config"]["version"] == 2
    assert training_kwargs(plan, "cpu", False) == {"save_only_model": True}

"""Models larger than one device on the pt backend: tensor parallelism (`--tensor_parallel_size`, transformers' plan
over gloo on CPU) gives one process's answers; bad settings are one line before any weight loads.

FSDP training is in test_sft.py, beside the DDP test it mirrors.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from swiftcli.cli import main

QUESTIONS = "hello there\nWhat is 2 + 2?\nName a colour.\n"


def swift_infer(model_dir: str, *flags: str, stdin: str = QUESTIONS) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--model_id_or_path", model_dir,
                           "--infer_backend", "pt", "--dtype", "fp32", "--max_new_tokens", "16", *flags], input=stdin,
                          capture_output=True, text=True, timeout=600, env=env)


def tp_followers() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "swiftcli.engine.tp_follower" in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_two_ranks_answer_like_one_process(families):
    """A pipe of three questions through `swift infer --tensor_parallel_size 2`: in fp32 (in bf16 the ranks' partial
    sums round differently, and a random model's near-ties part), the same greedy replies as one
    process (Llama-3.1's layout, 4 heads and 2 KV heads split over 2 ranks), and no follower left after exit."""
    model_dir = families("llama3_1")
    one = swift_infer(model_dir)
    two = swift_infer(model_dir, "--tensor_parallel_size", "2")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert "tensor parallel: 2 ranks" in two.stderr
    assert two.stdout == one.stdout and one.stdout.count("-" * 50) == 3, (one.stdout, two.stdout)
    assert not tp_followers()


def test_two_ranks_serve_through_deploy(families, tmp_path: Path):
    """`swift deploy --tensor_parallel_size 2`: concurrent streamed and seeded sampled requests (rows joining and
    leaving the batch, a client that leaves mid-stream) equal one process's; SIGTERM stops every rank."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import start_swift

    model_dir = families("llama3_1")
    answers = {}
    for size in (1, 2):
        server = start_swift(tmp_path, f"tp{size}", "deploy", "--model_id_or_path", model_dir, "--infer_backend",
                             "pt", "--dtype", "fp32", "--tensor_parallel_size", str(size))
        try:
            server.wait_ready()
            client = server.client()
            model = client.models.list().data[0].id

            def ask(i: int) -> str:
                kwargs = {"temperature": 0} if i % 2 else {"temperature": 1.0, "seed": i}
                stream = client.chat.completions.create(model=model, stream=True, max_tokens=6 + 3 * i, **kwargs,
                                                        messages=[{"role": "user", "content": f"question {i}"}])
                return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

            leaving = client.chat.completions.create(model=model, stream=True, max_tokens=200,
                                                     messages=[{"role": "user", "content": "tell a long story"}])
            next(iter(leaving))
            leaving.close()  # a client that leaves: its row is aborted on every rank at the same step
            with ThreadPoolExecutor(6) as pool:
                answers[size] = list(pool.map(ask, range(6)))
        finally:
            server.stop()
        assert server.proc.returncode == 0, server.log_text()[-3000:]
    assert answers[2] == answers[1]
    assert not tp_followers()


@pytest.mark.parametrize("case, expected", [
    ("more ranks than cores", "CPU cores"),
    ("heads don't divide", "must divide the model's num_attention_heads (9)"),
    ("with LoRA", "LoRA adapters"),
    ("with device_map", "choose one"),
])
def test_bad_tensor_parallel_is_one_line(case: str, expected: str, model_dir: str, lora_dir: str, capsys):
    flags = {"more ranks than cores": ["--tensor_parallel_size", str((os.cpu_count() or 1) + 1)],
             "heads don't divide": ["--tensor_parallel_size", "2"],
             "with LoRA": ["--tensor_parallel_size", "2", "--lora_modules", f"a={lora_dir}"],
             "with device_map": ["--tensor_parallel_size", "2", "--device_map", "auto"]}[case]
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--infer_backend", "pt", *flags])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and expected in err.splitlines()[-1], err
    assert "Traceback" not in err and not tp_followers()

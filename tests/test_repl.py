"""`swift infer` as a user meets it: a pseudo-terminal REPL (every command) and a pipe."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pexpect
import pytest

SEP = "-" * 50
pytestmark = pytest.mark.slow


def swift_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "swiftcli", "infer", "--infer_backend", "pt", *args]


@pytest.fixture()
def repl(tmp_path):
    # room for a long answer, so the one cut by Ctrl-C is still streaming when the signal comes, on a loaded machine
    cmd = swift_cmd("--max_new_tokens", "256", "--save_result", "true", "--result_dir", str(tmp_path))
    child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=120, cwd=str(tmp_path),
                          env={**os.environ, "COLUMNS": "200"}, dimensions=(50, 200))
    child.expect_exact("<<< ")
    yield child
    child.close(force=True)


def ask(child: pexpect.spawn, text: str) -> str:
    child.sendline(text)
    child.expect_exact(SEP)
    answer = child.before.split(text, 1)[-1].strip()
    child.expect_exact("<<< ")
    return answer


def test_repl_every_command(repl, tmp_path):
    assert "Paris" in ask(repl, "What is the capital of France?")
    # history is kept: the follow-up only makes sense with the first turn
    assert "Paris" in ask(repl, "Repeat the city you just named, one word.")
    repl.sendline("clear")
    repl.expect_exact("<<< ")
    repl.sendline("reset-system")
    repl.expect_exact("<<<[S] ")
    repl.sendline("You are a pirate. Always start your answer with 'Arr'.")
    repl.expect_exact("<<< ")
    pirate = ask(repl, "Hello, who are you?").lower()
    assert any(word in pirate for word in ("arr", "aye", "matey", "pirate", "captain")), pirate
    repl.sendline("multi-line")
    repl.expect_exact("<<<[M] ")
    repl.sendline("What is the capital")
    repl.sendline("of France?#")
    repl.expect_exact(SEP)
    assert "Paris" in repl.before
    repl.expect_exact("<<<[M] ")
    repl.sendline("single-line")
    repl.expect_exact("<<< ")
    # Ctrl-C stops the current answer and returns to the prompt
    repl.sendline("Write a very long story about a dragon, at least 500 words.")
    repl.expect_exact("at least 500 words.")  # the terminal's echo of the line: the answer comes after it
    repl.expect(r"\w+ \w+ \w+")
    repl.sendintr()
    repl.expect_exact(SEP)
    repl.expect_exact("<<< ")
    assert "Paris" in ask(repl, "What is the capital of France?")
    repl.sendline("exit")
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0
    [result] = list((tmp_path / "infer_result").glob("*.jsonl"))
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert rows[0]["query"] == "What is the capital of France?" and "Paris" in rows[0]["response"]
    assert rows[1]["history"] == [[rows[0]["query"], rows[0]["response"]]]
    assert rows[2]["system"].startswith("You are a pirate") and rows[2]["history"] == []
    assert len(rows) == 5  # the interrupted answer is not recorded


def test_ctrl_d_exits_cleanly(repl):
    repl.sendeof()
    repl.expect(pexpect.EOF)
    repl.close()
    assert repl.exitstatus == 0


def test_pipe_answers_each_line_and_exits_0(tmp_path):
    out = subprocess.run(swift_cmd("--max_new_tokens", "32"), input="What is the capital of France?\n\nexit\n",
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and out.stdout.count(SEP) == 1
    assert "<<<" not in out.stdout  # no prompts when stdin is not a terminal
    assert "backend: pt" in out.stderr and "template: smollm2" in out.stderr
    assert not (tmp_path / "infer_result").exists()  # the REPL saves nothing unless asked


def test_lora_ckpt_dir_answers_with_its_adapter(tmp_path, lora_dir):
    question = "What is the capital of France?\n"
    base = subprocess.run(swift_cmd("--max_new_tokens", "16"), input=question, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    lora = subprocess.run(swift_cmd("--ckpt_dir", lora_dir, "--max_new_tokens", "16"), input=question,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert base.returncode == lora.returncode == 0, lora.stderr
    assert "adapters: default-lora" in lora.stderr
    assert "Paris" in base.stdout and lora.stdout != base.stdout  # the REPL asked the adapter, not the base model

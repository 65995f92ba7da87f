"""`swift infer` in a pseudo-terminal on the vLLM backend: Ctrl-C stops only the answer it interrupts.

The terminal sends Ctrl-C's SIGINT to its whole foreground process group; vLLM's engine processes must not be in it
(they used to die of it: the next question ended in EngineDeadError, or hung). One vLLM start for the whole module.
"""
from __future__ import annotations

import os
import sys

import pexpect
import pytest
from conftest import assert_all_exited, assert_quiet_vllm, descendants
from test_repl import SEP, ask

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LONG = "Write a very long story about a dragon, at least 500 words."


def test_ctrl_c_stops_the_answer_not_the_engine(tmp_path):
    cmd = [sys.executable, "-m", "swiftcli", "infer", "--infer_backend", "vllm", "--enforce_eager", "true",
           "--max_new_tokens", "400"]
    transcript = tmp_path / "transcript.txt"
    with transcript.open("w") as log:
        child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=600, cwd=str(tmp_path), logfile=log,
                              env={**os.environ, "COLUMNS": "200"}, dimensions=(50, 200))
        try:
            child.expect_exact("<<< ")
            engine = descendants(child.pid)
            assert engine, "vLLM's engine runs in processes of its own"
            child.timeout = 120

            # Ctrl-C mid-answer: back to the prompt; the engine still answers
            child.sendline(LONG)
            child.expect(r"\w+ \w+ \w+ \w+")
            child.sendintr()
            child.expect_exact(SEP)
            child.expect_exact("<<< ")
            assert "Paris" in ask(child, "What is the capital of France?")

            # Ctrl-C at an idle prompt: a fresh prompt, and the next question is answered (it used to hang)
            child.sendintr()
            child.expect_exact("<<< ")
            assert "Paris" in ask(child, "What is the capital of France?")
            assert all(p.is_running() for p in engine)

            # Ctrl-D: exit 0, vLLM's processes stopped with the command
            child.sendeof()
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0, child.before
        finally:
            child.close(force=True)
    assert_all_exited(engine, within=5)
    assert_quiet_vllm(transcript.read_text(errors="replace"))

"""What a user sees of vLLM's engine processes around each command that starts them, run as the user runs it.

Every command must start without screens of vLLM warnings, stop its engine cleanly (no force-kill, no leaked
semaphore or shared memory) and leave no VLLM::EngineCore / VLLM::Worker behind: after a script of the seed's
Python API, SIGTERM to `swift deploy`, Ctrl-C in a dataset run (results so far kept) and Ctrl-C in `swift app-ui`.
Ctrl-C is what a terminal sends: SIGINT to the command's whole process group. (The REPL: test_repl_vllm.py.)
One vLLM start per `vllm` test, 30-60 s each on this CPU; the first tests check the mechanism without vLLM.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import assert_all_exited, assert_quiet_vllm, descendants, free_port

from swiftcli.engine.vllm_process import engine_processes


SEED_SCRIPT = textwrap.dedent("""
    from swiftcli.llm import ModelType, get_vllm_engine, get_default_template_type, get_template, inference_vllm

    model_type = ModelType.smollm2_135m_instruct
    llm_engine = get_vllm_engine(model_type, enforce_eager=True)
    template = get_template(get_default_template_type(model_type), llm_engine.hf_tokenizer)
    llm_engine.generation_config.max_new_tokens = 32
    resp_list = inference_vllm(llm_engine, template, [{'query': 'What is the capital of France?'}])
    print(resp_list[0]['response'], resp_list[0]['history'])
""")
"""The seed tutorial's vLLM example as it is written: no `if __name__ == '__main__':` around it."""


RUNNING: list[Command] = []
"""Commands started by the running test, killed after it: a failed assertion must not leave a server behind."""


@pytest.fixture(autouse=True)
def _no_command_left():
    yield
    while RUNNING:
        RUNNING.pop().kill()


class Command:
    """A command in a session of its own (as a terminal runs one), its output in a file, and every process it
    starts noted while it runs."""

    def __init__(self, tmp_path: Path, *args: str):
        self.log = tmp_path / "output.txt"
        # one torch thread: OpenMP threads spinning against another process on 2 shared cores make pt steps many
        # times slower (a Ctrl-C test then waits minutes for its first rows)
        self.proc = subprocess.Popen(list(args), stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     cwd=tmp_path, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self._started: dict[int, object] = {}
        threading.Thread(target=self._watch, daemon=True).start()
        RUNNING.append(self)

    def kill(self) -> None:
        """The command and every process it started, whatever state a failed test left them in."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for process in self.engine:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.proc.wait()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                self._started.update((p.pid, p) for p in descendants(self.proc.pid))
            time.sleep(0.2)

    @property
    def engine(self) -> list:
        """The processes the command started (vLLM's engine core and worker), all it ever had."""
        return list(self._started.values())

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, ready, timeout: float = 600) -> None:
        """Until `ready()` holds, noting the processes the command started."""
        deadline = time.time() + timeout
        while not ready():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
            assert time.time() < deadline, f"not ready after {timeout} s:\n{self.output()[-3000:]}"
            time.sleep(0.5)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _engine_process(sessions) -> None:
    """Stands for vLLM's EngineCore: prints one of vLLM's platform notes, a line of its own, reports its session."""
    print("(Worker pid=1) WARNING 11-29 08:56:01 [cpu_worker.py:114] libtcmalloc is not found in LD_PRELOAD.",
          file=sys.stderr)
    print("a line worth reading", file=sys.stderr, flush=True)
    sessions.put(os.getsid(0))


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_engine_processes_get_their_own_session_and_a_filtered_stderr(level, capfd, monkeypatch):
    import multiprocessing

    monkeypatch.setenv("SWIFT_LOG_LEVEL", level)
    spawn = multiprocessing.get_context("spawn")
    sessions = spawn.Queue()
    with engine_processes() as stderr:
        process = spawn.Process(target=_engine_process, args=(sessions,))
        process.start()
    assert sessions.get(timeout=120) != os.getsid(0)  # the terminal's Ctrl-C (SIGINT to our group) can't reach it
    process.join(60)
    if stderr is not None:
        stderr.wait(10)
    err = capfd.readouterr().err
    assert "a line worth reading" in err
    assert ("LD_PRELOAD" in err) == (level == "DEBUG")  # DEBUG shows everything


def test_log_level_flag(capsys, monkeypatch):
    from swiftcli.cli import main
    from swiftcli.log import setup_logging

    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--infer_backend", "pt", "--log_level", "LOUD"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("swift: error: --log_level must be one of DEBUG, INFO, WARNING, ERROR, "
                                               "CRITICAL, got 'LOUD'")
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("SWIFT_LOG_LEVEL", raising=False)
    try:
        setup_logging("debug")
        assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"  # vLLM's processes log everything too
        setup_logging("info")
        assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"
    finally:
        setup_logging()


def serves(url: str):
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    return ready


@pytest.mark.vllm
@pytest.mark.slow
def test_seed_api_script_runs_and_exits_cleanly(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(SEED_SCRIPT)
    command = Command(tmp_path, sys.executable, str(script))
    assert command.finish() == 0, command.output()
    assert len(command.engine) >= 2, "vLLM's engine core and worker run in processes of their own"
    assert "Paris" in command.output()
    assert_all_exited(command.engine)
    assert_quiet_vllm(command.output())


@pytest.mark.vllm
@pytest.mark.slow
def test_deploy_sigterm_stops_the_engine_cleanly(tmp_path):
    port = free_port()
    command = Command(tmp_path, sys.executable, "-m", "swiftcli", "deploy", "--infer_backend", "vllm",
                      "--enforce_eager", "true", "--port", str(port), "--max_new_tokens", "16")
    command.wait_for(serves(f"http://127.0.0.1:{port}/health"))
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="EMPTY", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content
    assert command.engine, "vLLM's engine runs in processes of its own"
    command.proc.terminate()
    assert command.finish() == 0, command.output()
    assert "exiting after SIGTERM" in command.output()
    assert_all_exited(command.engine)
    assert_quiet_vllm(command.output())


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("vllm", marks=pytest.mark.vllm), "pt"])
def test_dataset_run_ctrl_c_stops_cleanly_and_keeps_the_results(tmp_path, backend):
    rows = [{"query": f"Write a long story about a dragon named Dragon{i}.", "response": "x"} for i in range(12)]
    (tmp_path / "stories.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    results = tmp_path / "results.jsonl"
    command = Command(tmp_path, sys.executable, "-m", "swiftcli", "infer", "--infer_backend", backend,
                      "--enforce_eager", "true", "--val_dataset", "stories.jsonl", "--result_path", str(results),
                      "--max_num_seqs", "2", "--max_batch_size", "2", "--max_new_tokens", "64", "--temperature", "0")
    command.wait_for(lambda: results.exists() and results.read_text().count("\n") >= 2)
    assert command.engine or backend == "pt", "vLLM's engine runs in processes of its own"
    command.ctrl_c()
    assert command.finish() == 130, command.output()
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert 2 <= len(lines) < len(rows) and all(line["response"] and line["error"] is None for line in lines)
    assert f"Interrupted: {len(lines)} rows are in {results}" in command.output()
    assert_all_exited(command.engine)
    assert_quiet_vllm(command.output())


@pytest.mark.vllm
@pytest.mark.slow
def test_app_ui_ctrl_c_stops_the_engine_cleanly(tmp_path):
    port = free_port()
    command = Command(tmp_path, sys.executable, "-m", "swiftcli", "app-ui", "--infer_backend", "vllm",
                      "--enforce_eager", "true", "--port", str(port))
    command.wait_for(serves(f"http://127.0.0.1:{port}/"))
    assert command.engine, "vLLM's engine runs in processes of its own"
    command.ctrl_c()
    assert command.finish() == 0, command.output()
    assert_all_exited(command.engine)
    assert_quiet_vllm(command.output())

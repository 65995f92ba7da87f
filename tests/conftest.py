"""Shared fixtures: the embedded default model, one pt engine per session, a LoRA adapter made from the model."""
from __future__ import annotations

import os
import signal
import socket
import contextlib
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # pytest started in the background of a script (`... &`) ignores SIGINT, and its children would inherit that:
    # the Ctrl-C tests need children that take SIGINT as a terminal's user sends it.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def model_dir() -> str:
    from swiftcli.model import embedded_model_dir

    return embedded_model_dir()


def make_lora(model_dir: str, out_dir: str, seed: int = 0, scale: float = 0.15) -> str:
    """A peft LoRA adapter on q/k/v/o_proj with non-zero random B (peft starts B at zero, a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def lora_dir(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_lora(model_dir, str(tmp_path_factory.mktemp("lora") / "adapter"))


@pytest.fixture(scope="session")
def pt_engine(lora_dir: str):
    """The default model in fp32 on the pt backend, with one LoRA named `my_lora`."""
    from swiftcli.arguments import InferArguments
    from swiftcli.engine import get_engine

    return get_engine(InferArguments(infer_backend="pt", dtype="fp32", lora_modules=[f"my_lora={lora_dir}"]))


# ---- `swift deploy` / `swift app-ui` as the user runs them: a subprocess on a free loopback port ---------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses_connections(port: int, within: float) -> bool:
    """Whether the port stops accepting TCP connections within `within` seconds."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


@dataclass
class SwiftServer:
    """A `swift <command> --port N` subprocess, its output in a log file."""

    proc: subprocess.Popen
    port: int
    log: Path
    ready_path: str
    """The URL path that answers 200 once it serves (/health for deploy, / for app-ui)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = "EMPTY"):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=300)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"swift {self.proc.args[3]} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"swift {self.proc.args[3]} not ready after {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_swift(log_dir: Path, name: str, command: str, *flags: str, ready_path: str = "/health",
                one_thread: bool = True, env: dict[str, str] | None = None) -> SwiftServer:
    """`python -m swiftcli <command> --port <free> *flags`. one_thread: a single torch thread, since OpenMP threads
    spinning against other processes on the 2 shared cores make every step several times slower."""
    port, log = free_port(), log_dir / f"{name}.log"
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if one_thread else {}), **(env or {})}
    cmd = [sys.executable, "-m", "swiftcli", command, "--port", str(port), *flags]
    return SwiftServer(subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env), port, log,
                       ready_path)


@contextlib.contextmanager
def serve_in_thread(engine, **deploy_args) -> Iterator[str]:
    """`swift deploy`'s real app and uvicorn, in this process, around an engine the test controls; yields the
    base URL of its OpenAI API."""
    import uvicorn

    from swiftcli.arguments import DeployArguments
    from swiftcli.deploy.app import create_app

    port = free_port()
    app = create_app(engine, DeployArguments(infer_backend="pt", port=port, log_interval=0, **deploy_args))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


# ---- the model-family matrix: tiny checkpoints of Qwen2.5, Qwen3, Llama-3.1, Mistral, Gemma-2, Phi-3, a base model -
@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory):
    """`families(name)` -> the directory of that family's tiny checkpoint (tests/families.py), built on first use;
    `families.forced(name, token)` -> a copy whose greedy decoding emits `token` first."""
    from families import FamilyBuilder

    return FamilyBuilder(tmp_path_factory.mktemp("families"))


# ---- vLLM's processes as a user meets them: a quiet start, a clean stop, no process left behind -----------------
VLLM_NOISE = ("force killing", "leaked semaphore", "leaked shared_memory", "resource_tracker", "Triton", "NUMA",
              "LD_PRELOAD", "FutureWarning", "DeprecationWarning", "Traceback", "EngineDeadError")
"""What vLLM commands printed before issue 15 (item 5): start-up warnings, force-kills, leaks, dead engines."""


def assert_quiet_vllm(output: str) -> None:
    """No line of VLLM_NOISE and no WARNING line of vLLM's own (`(EngineCore pid=N) WARNING ...`) in `output`."""
    import re

    found = [line for line in output.splitlines()
             if any(word in line for word in VLLM_NOISE) or re.search(r"pid=\d+\) WARNING", line)]
    assert not found, "\n".join(found)


def descendants(pid: int) -> list:
    """The processes `pid` started, and theirs (vLLM's engine core and workers): psutil.Process objects."""
    import psutil

    return psutil.Process(pid).children(recursive=True)


def assert_all_exited(processes: list, within: float = 5) -> None:
    """Every process in `processes` has exited within `within` seconds (the command waited for them)."""
    import psutil

    def running(p) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    _, alive = psutil.wait_procs(processes, timeout=within)
    left = [(p, p.name()) for p in alive if running(p)]
    for p, _ in left:
        p.kill()
    assert not left, f"left running: {[name for _, name in left]}"

"""vLLM's engine processes as a terminal user expects them: Ctrl-C is ours, their start is quiet, their stop clean.

vLLM runs the model in processes of its own: EngineCore, which starts VLLM::Worker. Left as vLLM starts them:
- they are in the terminal's foreground process group, so the Ctrl-C meant to stop one answer reaches them too
  and kills the engine (the next question fails with EngineDeadError, or hangs);
- they print a screen of warnings no `swift` user can act on (Triton, NUMA, LD_PRELOAD, FutureWarning);
- vLLM waits 5 s for them to exit, which a busy CPU exceeds, then force-kills them (shared memory leaks);
- Python's "spawn" runs the caller's script again in each of them, so a script of the seed's API that starts vLLM
  outside `if __name__ == '__main__':` (as the seed tutorial's do) fails to start.

So they are started in a session of their own, without the caller's script, with stderr through a filter, and
given time to stop.
"""
from __future__ import annotations

import contextlib
import multiprocessing.spawn
import multiprocessing.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator

from ..log import is_vllm_noise, log_level

SHUTDOWN_TIMEOUT_S = 60
"""How long vLLM's engine processes get to exit after SIGTERM (vLLM's default, 5 s, is what a worker alone takes to
free its KV cache on this 2-core machine); past it vLLM kills them, and says so."""

STDERR = 2
"""The file descriptor processes inherit as their stderr (sys.stderr may be something else: pytest's capture)."""

_spawned: list[subprocess.Popen] = []
"""Popen objects of the processes started for vLLM: multiprocessing reaps them itself, so they must never be
collected (a collected running Popen is reaped by subprocess, and multiprocessing's join would wait forever)."""


def _spawn_in_own_session(path: str, args: list[str], passfds: tuple[int, ...]) -> int:
    """multiprocessing.util.spawnv_passfds, with the child in a session of its own: signals the terminal sends
    its foreground process group (Ctrl-C's SIGINT, SIGHUP) reach only `swift`, which stops vLLM cleanly itself."""
    proc = subprocess.Popen(args, executable=path, pass_fds=passfds, start_new_session=True)
    _spawned.append(proc)
    return proc.pid


def _preparation_data(name: str) -> dict:
    """multiprocessing.spawn.get_preparation_data, less the caller's main script: vLLM's processes run vLLM's code."""
    data = _get_preparation_data(name)
    data.pop("init_main_from_path", None)
    return data


_get_preparation_data = multiprocessing.spawn.get_preparation_data


@contextlib.contextmanager
def engine_processes() -> Iterator[StderrFilter | None]:
    """Around vLLM's engine start: the processes it starts (and theirs) get a session of their own and not the
    caller's script, and their stderr (fd 2) goes through a filter that drops VLLM_NOISE (not with DEBUG). This
    process's stderr goes through it too until the engine is up. Yields the filter (None with DEBUG)."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # started before: its own output must not go through the filter
    env = {"VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT_S // 2)}
    if log_level() != "DEBUG":  # vLLM's deprecation notices are for vLLM's developers
        env["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning",
                                                       "ignore::DeprecationWarning"]))
    saved_env = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    spawn, multiprocessing.util.spawnv_passfds = multiprocessing.util.spawnv_passfds, _spawn_in_own_session
    multiprocessing.spawn.get_preparation_data = _preparation_data
    relay = StderrFilter() if log_level() != "DEBUG" else None
    try:
        with relay.installed() if relay else contextlib.nullcontext():
            yield relay
    except Exception:
        if relay:  # vLLM failed to start: its processes' last lines say why
            relay.wait(5)
        raise
    finally:
        multiprocessing.util.spawnv_passfds = spawn
        multiprocessing.spawn.get_preparation_data = _get_preparation_data
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class StderrFilter:
    """Copies what is written to a pipe to our stderr, line by line, less VLLM_NOISE. Processes started while it is
    installed as fd 2 keep writing to it; the copying thread ends when the last of them has exited."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._out = os.dup(STDERR)
        self.thread = threading.Thread(target=self._copy, name="vllm-stderr", daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        sys.stderr.flush()
        saved = os.dup(STDERR)
        os.dup2(self._write, STDERR)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, STDERR)
            os.close(saved)
            os.close(self._write)  # the pipe now stays open only as long as the processes started meanwhile run

    def wait(self, timeout: float) -> None:
        """Until the processes writing to the filter have exited and all they wrote is out."""
        self.thread.join(timeout)

    def _copy(self) -> None:
        pending = b""
        with open(self._read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                *lines, pending = re.split(rb"(?<=[\r\n])", pending + chunk)  # \r: progress bars pass at once
                self._write_out(lines)
        self._write_out([pending])
        os.close(self._out)

    def _write_out(self, lines: list[bytes]) -> None:
        text = memoryview(b"".join(line for line in lines if not is_vllm_noise(line.decode(errors="replace"))))
        with contextlib.suppress(OSError):
            while text:
                text = text[os.write(self._out, text):]

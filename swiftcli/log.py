"""Logging for every command: ours at --log_level (or SWIFT_LOG_LEVEL, default INFO), libraries' at WARNING.

vLLM's own log (in this process and in its engine processes) is kept to WARNING and above, less the warnings
nobody running `swift` can act on (VLLM_NOISE); DEBUG shows everything, vLLM's DEBUG log included. Only the
standard library is imported here: `swift --help` and vLLM's engine processes import this module.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator

from .errors import ArgumentError

_USER_VLLM_LEVEL = os.environ.get("VLLM_LOGGING_LEVEL")
"""A VLLM_LOGGING_LEVEL the user exported wins over ours."""
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

VLLM_NOISE = re.compile("|".join([
    # the CPU build's platform notes, printed by every engine process on every start
    r"Triton is installed, but doesn't include CPU backend",
    r"Triton is not installed\. triton-cpu is expected",
    r"Model Runner V2 requires Triton",
    r"Reset SSM cache type to float32",
    r"is not found in LD_PRELOAD",  # libtcmalloc / libiomp: a tuning hint for vLLM's own deployments
    r"Warning: NUMA binding: Using MEMBIND policy",  # torch's C++ log, from the worker
    # the consequences of settings we (or the user) chose on purpose
    r"Enforce eager set, disabling torch\.compile",
    r"Inductor compilation was disabled by user settings",
    # printed at the first LoRA request whatever the adapter holds; swift encodes prompts with the base tokenizer
    r"vLLM has deprecated support for supporting different tokenizers for different LoRAs",
]))
"""What vLLM's processes print that is not for a `swift` user: platform notes and echoes of chosen settings."""


def log_level() -> str:
    """The level `swift` logs at: the one setup_logging set, else SWIFT_LOG_LEVEL, else INFO."""
    level = os.environ.get("SWIFT_LOG_LEVEL", "INFO").upper()
    return level if level in LEVELS else "INFO"


def vllm_log_level() -> str:
    """vLLM's level: DEBUG with ours, else WARNING at the least (its INFO lines would drown the answers)."""
    level = log_level()
    return level if level in ("DEBUG", "ERROR", "CRITICAL") else "WARNING"


def is_vllm_noise(text: str) -> bool:
    return log_level() != "DEBUG" and VLLM_NOISE.search(text) is not None


class VllmNoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not is_vllm_noise(record.getMessage())


VLLM_IN_PROCESS_EMITTERS = ("vllm.triton_utils.importing", "vllm.v1.engine.input_processor")
"""vLLM's loggers in our own process that print VLLM_NOISE: the Triton note of its first import (before its logging
is set up) and the LoRA-tokenizer note of its request intake."""


def quiet_vllm_import() -> None:
    """VLLM_NOISE from vLLM in our own process goes away here. (What its engine processes print goes through
    swiftcli.engine.vllm_process's filter.)"""
    for name in VLLM_IN_PROCESS_EMITTERS:
        emitter = logging.getLogger(name)
        if not emitter.filters:
            emitter.addFilter(VllmNoiseFilter())


class BitsandbytesKernelsFilter(logging.Filter):
    """bitsandbytes (which peft imports) warns on every start, on CPUs with AVX512-BF16, that the optional `kernels`
    package (a faster 4-bit CPU matmul fetched from the Hugging Face hub) is missing: nothing a `swift` user acts on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return log_level() == "DEBUG" or not str(record.msg).startswith(
            "Failed to load CPU gemm_4bit_forward from kernels-community")


def quiet_bitsandbytes() -> None:
    emitter = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not emitter.filters:
        emitter.addFilter(BitsandbytesKernelsFilter())


def setup_logging(level: str | None = None) -> None:
    """Our logger at `level` (None: SWIFT_LOG_LEVEL or INFO); noisy libraries' warnings only with DEBUG. The level
    is exported as SWIFT_LOG_LEVEL, so the processes a command starts (vLLM's, torchrun's) log alike."""
    if level is not None:
        if level.upper() not in LEVELS:
            raise ArgumentError(f"--log_level must be one of {', '.join(LEVELS)}, got {level!r}")
        os.environ["SWIFT_LOG_LEVEL"] = level.upper()
    level = log_level()
    debug = level == "DEBUG"
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s] %(message)s", stream=sys.stderr)
    quiet_vllm_import()
    quiet_bitsandbytes()
    logging.getLogger("swiftcli").setLevel(level)
    hidden = logging.WARNING if debug else logging.ERROR
    for noisy in ("transformers", "huggingface_hub", "modelscope"):
        logging.getLogger(noisy).setLevel(hidden)
    os.environ["VLLM_LOGGING_LEVEL"] = _USER_VLLM_LEVEL or vllm_log_level()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_transformers(hidden)


def quiet_transformers(level: int) -> None:
    """transformers' log level and no progress bars. Before transformers is imported, through the environment it
    reads on import (importing it here would cost `swift --help` two seconds); after, through its own calls."""
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(level).lower()
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)
        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def elapsed_progress(message: str, every_s: float = 15) -> Iterator[None]:
    """Log `message (N s)` every `every_s` seconds until the block ends: a long silent wait (vLLM compiling the model
    on its first start) shows it is working."""
    import threading
    import time

    done, start = threading.Event(), time.perf_counter()

    def tick() -> None:
        while not done.wait(every_s):
            logging.getLogger("swiftcli").info("%s (%.0f s)", message, time.perf_counter() - start)

    thread = threading.Thread(target=tick, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()

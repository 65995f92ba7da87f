"""Shared fixtures: the embedded default model, one pt engine per session, a LoRA adapter made from the model."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


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

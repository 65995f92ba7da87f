"""Fine-tuning: `swift sft` (`run_sft(SftArguments)`), in one process or data-parallel (NPROC_PER_NODE)."""
from .launch import run_sft
from .sft import train_sft

__all__ = ["run_sft", "train_sft"]

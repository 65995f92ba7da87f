"""`swift export`: merge a LoRA into full weights, convert ms-swift LoRA checkpoints to peft, quantize.

Python API (also from `swiftcli.llm`): `merge_lora(args)`, `to_peft_format(args)`, `quantize(args)` and
`run_export(args)`, each taking an `ExportArguments` and returning the directory it wrote.
"""
from __future__ import annotations

from ..arguments import ExportArguments
from .merge import merge_lora
from .peft_format import to_peft_format
from .quantize import quantize

__all__ = ["merge_lora", "quantize", "run_export", "to_peft_format"]


def run_export(args: ExportArguments) -> str:
    """The one action the arguments ask for (quantize merges first with --merge_lora); returns the output dir."""
    if args.to_peft_format:
        return to_peft_format(args)
    if args.quant_bits:
        return quantize(args)
    return merge_lora(args)

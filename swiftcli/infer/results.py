"""Where `swift infer` writes its results, and the line between printed rows (shared by the REPL and datasets)."""
from __future__ import annotations

import os
import time

from ..arguments import InferArguments

SEPARATOR = "-" * 50


def result_path(args: InferArguments) -> str:
    if args.result_path:
        return args.result_path
    root = args.result_dir or (args.ckpt_dir if args.ckpt_dir else ".")
    return os.path.join(root, "infer_result", time.strftime("%Y%m%d-%H%M%S") + ".jsonl")

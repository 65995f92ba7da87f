"""`swift infer`: the chat REPL (a pipe feeds it one query per line), or with datasets an evaluation run."""
from __future__ import annotations

import sys

from ..arguments import InferArguments
from ..engine import get_engine, print_banner, seed_everything
from .repl import run_repl


def run_infer(args: InferArguments) -> None:
    """A dataset evaluation run with --dataset / --val_dataset (or --load_dataset_config), else the REPL."""
    seed_everything(args.seed)
    if args.dataset or args.val_dataset:
        from .evaluate import run_infer_dataset

        run_infer_dataset(args)
        return
    engine = get_engine(args)
    print_banner(engine)
    errors = run_repl(engine, args)
    if errors and not sys.stdin.isatty():
        raise SystemExit(2)

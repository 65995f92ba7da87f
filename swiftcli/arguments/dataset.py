"""The dataset group (which rows, how they are split and sampled: sft, infer's evaluation, export's calibration)
and the evaluation group of `swift infer` (which validation rows, scores, where results go)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..checkpoint import read_ckpt_args
from ..errors import ArgumentError
from .base import Arguments, check_ranges

DATASET_FIELDS = ("dataset", "val_dataset", "dataset_test_ratio", "dataset_seed", "train_dataset_sample",
                  "val_dataset_sample")
"""What --load_dataset_config restores from a checkpoint's args.json: the training run's validation split."""
METRICS = ("acc", "rouge", "bleu")


@dataclass
class DatasetArguments(Arguments):
    dataset: list[str] = field(default_factory=list)
    """Datasets: local files (jsonl, json, csv, parquet), save_to_disk directories or hub ids, with `#N` sampling."""
    val_dataset: list[str] = field(default_factory=list)
    """Validation datasets (then nothing is split off --dataset)."""
    dataset_test_ratio: float | None = None
    """Share of --dataset held out for validation, default 0.01 (the same seeded split in sft and in evaluation)."""
    dataset_seed: int | None = None
    """Seed of the split and of sampling (default: --seed)."""
    train_dataset_sample: int | None = None
    """Use N training rows (default or -1: all)."""
    val_dataset_sample: int | None = None
    """Use N validation rows (default or -1: all)."""

    def __post_init__(self) -> None:
        """Defaults of the fields left unset, applied after a checkpoint's args.json had its say."""
        super().__post_init__()
        self.dataset_test_ratio = 0.01 if self.dataset_test_ratio is None else self.dataset_test_ratio
        self.dataset_seed = self.seed if self.dataset_seed is None else self.dataset_seed
        self.train_dataset_sample = -1 if self.train_dataset_sample is None else self.train_dataset_sample
        check_ranges(self, [("dataset_test_ratio", 0 <= self.dataset_test_ratio <= 1)])


@dataclass
class EvalArguments(Arguments):
    """With --dataset / --val_dataset / --load_dataset_config, `swift infer` evaluates instead of chatting."""

    save_result: bool | None = None
    """Save each turn to <result_dir>/infer_result/<time>.jsonl (default: on for datasets, off for the REPL)."""
    result_dir: str | None = None
    """Where infer_result/ goes (default: beside the checkpoint, else the current directory)."""
    load_dataset_config: bool = False
    """With --ckpt_dir: evaluate on the validation rows its training run held out (datasets, ratio, seed: args.json)."""
    show_dataset_sample: int = -1
    """Evaluate N validation rows picked with --dataset_seed (-1: all)."""
    verbose: bool | None = None
    """Print [QUERY], [RESPONSE] and [LABELS] for every row (default: on below 20 rows)."""
    metric: list[str] = field(default_factory=list)
    """Scores against the labels: acc (exact match after normalising), rouge (ROUGE-L), bleu (BLEU-4). Default: all."""
    resume: bool = False
    """Continue the --result_path file: rows it already holds are skipped, the rest appended."""
    result_path: str | None = None
    """The results file (default: <result_dir>/infer_result/<time>.jsonl); an existing one needs --resume true."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.load_dataset_config:
            self.restore_dataset_config()
        check_ranges(self, [("show_dataset_sample", self.show_dataset_sample >= -1)])
        for name in self.metric:
            if name not in METRICS:
                raise ArgumentError(f"--metric takes {', '.join(METRICS)}, got {name!r}")
        if self.resume and (not self.result_path or self.save_result is False):
            raise ArgumentError("--resume true needs --result_path (the results file to continue) and saved results")
        if self.result_path and not self.resume and os.path.exists(self.result_path):
            raise ArgumentError(f"--result_path {self.result_path} exists: pass --resume true to continue it")

    def restore_dataset_config(self) -> None:
        """The training run's datasets, ratio and seed from --ckpt_dir's args.json, where left unset."""
        if not self.ckpt_dir:
            raise ArgumentError("--load_dataset_config true needs --ckpt_dir (the checkpoint of the training run)")
        saved = read_ckpt_args(self.ckpt_dir)
        if not saved.get("dataset") and not saved.get("val_dataset"):
            raise ArgumentError(f"--load_dataset_config: {self.ckpt_dir} records no dataset in its args.json")
        for name in DATASET_FIELDS:
            if name in saved and getattr(self, name) in (None, []):
                setattr(self, name, saved[name])

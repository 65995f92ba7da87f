"""Rows from `--dataset` items, sampled (`#N`, --*_dataset_sample) and split (--dataset_test_ratio) with the seed,
so that sft, evaluation and export calibration see the same rows under the same keys."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ArgumentError
from .formats import Row, check_columns, to_row
from .sources import load_source, parse_spec


def load_rows(spec: str, use_hf: bool = False, seed: int = 42) -> list[Row]:
    """One `--dataset` item (`#N` sampled with `seed`) as rows; a missing path or unknown format raises."""
    source, count = parse_spec(spec)
    data = load_source(source, use_hf)
    check_columns(list(data.column_names), source)
    rows = [to_row(f"{source}:{i}", item) for i, item in enumerate(data)]
    return sample_rows(rows, count, seed)


def load_datasets(specs: list[str], use_hf: bool = False, seed: int = 42) -> list[Row]:
    """Several items, one after the other (an item listed twice keeps distinct keys)."""
    return _unique_keys([row for spec in specs for row in load_rows(spec, use_hf, seed)])


def sample_rows(rows: list[Row], count: int | None, seed: int) -> list[Row]:
    """`count` rows picked with the seed (ms-swift's rule): a random subset, or above len(rows) every row repeated
    and a random rest. None or -1: all rows, as they are."""
    if count is None or count < 0 or count == len(rows) or not rows:
        return rows
    rng = np.random.default_rng(seed)
    repeats = [i for _ in range(count // len(rows)) for i in range(len(rows))]
    rest = rng.permutation(len(rows))[:count % len(rows)].tolist()
    return _unique_keys([rows[i] for i in repeats + rest])


def split_dataset(rows: list[Row], test_ratio: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, val): ceil(len * test_ratio) rows picked with the seed are held out; both keep the rows' order.

    sft holds the validation rows out with this function and `--load_dataset_config` rebuilds them with it, so the
    same rows, ratio and seed always give the same split.
    """
    if not 0 <= test_ratio <= 1:
        raise ArgumentError(f"--dataset_test_ratio must be in [0, 1], got {test_ratio}")
    n_val = math.ceil(round(len(rows) * test_ratio, 6))  # round: 100 * 0.07 is 7.000000000000001
    held_out = set(np.random.default_rng(seed).permutation(len(rows))[:n_val].tolist())
    return ([r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out])


def get_dataset(args: Any, use_hf: bool = False) -> tuple[list[Row], list[Row]]:
    """(train, val) from DatasetArguments: --val_dataset if given (then --dataset is not split), else the split of
    --dataset; then --train_dataset_sample and --val_dataset_sample."""
    seed = args.dataset_seed
    rows = load_datasets(args.dataset, use_hf, seed)
    if args.val_dataset:
        return sample_rows(rows, args.train_dataset_sample, seed), get_val_dataset(args, use_hf)
    train, val = split_dataset(rows, args.dataset_test_ratio, seed)
    return sample_rows(train, args.train_dataset_sample, seed), sample_rows(val, args.val_dataset_sample, seed)


def get_val_dataset(args: Any, use_hf: bool = False) -> list[Row]:
    """What evaluation runs on: --val_dataset, else the part of --dataset that sft held out (same rows, same order)."""
    if not args.val_dataset:
        return get_dataset(args, use_hf)[1]
    rows = load_datasets(args.val_dataset, use_hf, args.dataset_seed)
    return sample_rows(rows, args.val_dataset_sample, args.dataset_seed)


def _unique_keys(rows: list[Row]) -> list[Row]:
    seen: Counter[str] = Counter()
    out = []
    for row in rows:
        seen[row.key] += 1
        out.append(row if seen[row.key] == 1 else replace(row, key=f"{row.key}+{seen[row.key] - 1}"))
    return out

"""Training rows: --dataset through the shared loaders and split, self-cognition mixed in, encoded with labels."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from ..arguments import SftArguments
from ..dataset import Row, get_dataset, load_source, sample_rows, to_row
from ..errors import SwiftError
from ..template import IGNORE_INDEX, Template

SELF_COGNITION_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "self_cognition.jsonl")
"""Identity questions and answers written for swiftcli: query, response (with {{NAME}}/{{AUTHOR}}), tag zh|en."""


def self_cognition_rows(n: int, model_name: list[str], model_author: list[str], seed: int) -> list[Row]:
    """`n` rows of the built-in identity set (sampled with `seed`); zh rows get the zh name and author, en the en."""
    names = {"zh": (model_name[0], model_author[0]), "en": (model_name[1], model_author[1])}
    rows = []
    for i, item in enumerate(load_source(SELF_COGNITION_FILE)):
        name, author = names[item["tag"]]
        filled = {k: item[k].replace("{{NAME}}", name).replace("{{AUTHOR}}", author) for k in ("query", "response")}
        rows.append(to_row(f"self-cognition:{i}", filled))
    return sample_rows(rows, n, seed)


def training_rows(args: SftArguments) -> tuple[list[Row], list[Row]]:
    """(train, val): the shared seeded split of --dataset (or --val_dataset), so `swift infer --load_dataset_config`
    rebuilds the same validation rows. Self-cognition rows join the training side only."""
    train, val = get_dataset(args, args.use_hf)
    if args.self_cognition_sample:
        train = train + self_cognition_rows(args.self_cognition_sample, args.model_name, args.model_author,
                                            args.dataset_seed)
    return train, val


@dataclass
class EncodeStats:
    """What happened to the rows on their way to token ids; logged, and the error message when nothing is left."""

    rows: int = 0
    kept: int = 0
    too_long: int = 0
    """Over max_length with truncation_strategy 'delete': dropped."""
    truncated: int = 0
    """Over max_length with 'truncation_left': their oldest tokens dropped."""
    unusable: Counter[str] = field(default_factory=Counter)
    """Why the other rows were dropped -> how many."""

    def summary(self, max_length: int | None) -> str:
        parts = [f"{self.kept}/{self.rows} rows kept"]
        if self.too_long:
            parts.append(f"{self.too_long} dropped over --max_length {max_length}")
        if self.truncated:
            parts.append(f"{self.truncated} truncated to --max_length {max_length}")
        parts += [f"{count} dropped: {reason}" for reason, count in self.unusable.most_common()]
        return ", ".join(parts)


def encode_rows(rows: list[Row], template: Template, max_length: int | None,
                truncation_strategy: str) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Token ids and labels (the loss falls on the replies only: the template's labels) for every usable row.

    A row over `max_length` is dropped ('delete') or loses its oldest tokens ('truncation_left', the template's rule
    at inference), so the replies at the end are kept.
    """
    stats = EncodeStats(rows=len(rows))
    encoded = []
    for row in rows:
        try:
            if row.error:
                raise SwiftError(row.error)
            if row.label is None:
                raise SwiftError("no reply to learn (the row does not end with an assistant message)")
            enc = template.encode(row.messages)
        except SwiftError as e:
            stats.unusable[str(e)] += 1
            continue
        input_ids, labels = enc.input_ids, enc.labels
        if max_length and len(input_ids) > max_length:
            if truncation_strategy == "delete":
                stats.too_long += 1
                continue
            stats.truncated += 1
            input_ids, labels = input_ids[-max_length:], labels[-max_length:]
        if all(label == IGNORE_INDEX for label in labels):
            stats.unusable["no reply token left after truncation"] += 1
            continue
        encoded.append({"input_ids": input_ids, "labels": labels})
        stats.kept += 1
    return encoded, stats


"""The one data layer: `--dataset` / `--val_dataset` items -> rows of OpenAI messages, sampled and split.

sft trains on these rows, `swift infer` evaluates on them and export calibrates with them, so every command sees
the same rows under the same keys, split the same way. Files and hub datasets are read by the `datasets` library;
a row that can't be used becomes a `Row` with an `error` (reported, counted), never a failed load.
"""
from __future__ import annotations

from .formats import (FORMAT_FIELDS, FORMAT_KEYS, FORMATS, SHAREGPT_ROLES, UNSUPPORTED_FIELDS, Format, Row,
                      check_columns, from_alpaca, from_conversation, from_openai, from_sharegpt, from_swift,
                      row_format, to_row)
from .sources import FILE_BUILDERS, absolute_spec, load_source, parse_spec
from .split import get_dataset, get_val_dataset, load_datasets, load_rows, sample_rows, split_dataset

__all__ = ["FILE_BUILDERS", "FORMATS", "FORMAT_FIELDS", "FORMAT_KEYS", "Format", "Row", "SHAREGPT_ROLES",
           "UNSUPPORTED_FIELDS", "absolute_spec", "check_columns", "from_alpaca", "from_conversation", "from_openai",
           "from_sharegpt", "from_swift", "get_dataset", "get_val_dataset", "load_datasets", "load_rows",
           "load_source", "parse_spec", "row_format", "sample_rows", "split_dataset", "to_row"]

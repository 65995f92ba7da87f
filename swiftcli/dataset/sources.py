"""Dataset sources: a `--dataset` item (a file, a `save_to_disk` directory or a hub id, `#N` for a sample) ->
a `datasets.Dataset`, read by the `datasets` library."""
from __future__ import annotations

import csv
import logging
import os
from typing import Any

from ..errors import ArgumentError

logger = logging.getLogger("swiftcli")

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File extension -> the `datasets` builder that reads it."""


def parse_spec(spec: str) -> tuple[str, int | None]:
    """'data.jsonl#100' -> ('data.jsonl', 100); no `#N`: (spec, None)."""
    source, sep, count = spec.rpartition("#")
    if sep and count.isdigit() and source:
        return source, int(count)
    return spec, None


def absolute_spec(spec: str) -> str:
    """A local dataset as an absolute path (`#N` kept): what an args.json records, so that `--load_dataset_config`
    finds it from any directory. Hub ids are returned as they are."""
    source, count = parse_spec(spec)
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        return spec
    return os.path.abspath(path) + ("" if count is None else f"#{count}")


def _is_hub_id(source: str) -> bool:
    """`owner/name` or `owner/name:subset`; anything else that does not exist is a missing local path."""
    repo = source.split(":", 1)[0]
    return (repo.count("/") == 1 and not source.startswith((".", "/", "~"))
            and os.path.splitext(repo)[1] not in FILE_BUILDERS)


def load_source(source: str, use_hf: bool = False) -> Any:
    """A file, a `save_to_disk` directory or a hub dataset (its train split) as a `datasets.Dataset`."""
    import datasets

    datasets.disable_progress_bars()  # "Generating train split: ..." for every file read: noise beside our log
    path = os.path.expanduser(source)
    try:
        if os.path.isdir(path):
            return _load_dir(path, datasets)
        if os.path.isfile(path):
            builder = FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
            if builder is None:
                raise ArgumentError(f"dataset {source!r}: unsupported file type; use .jsonl, .json, .csv or .parquet")
            features = _csv_features(path, datasets) if builder == "csv" else None
            return datasets.load_dataset(builder, data_files=path, split="train", features=features)
    except ArgumentError:
        raise
    except Exception as e:  # a broken file: one line for the user
        raise ArgumentError(f"cannot read dataset {source!r}: {_first_line(e)}") from None
    if not _is_hub_id(source):
        raise ArgumentError(f"dataset {source!r} does not exist")
    return _load_hub(source, use_hf, datasets)


def _csv_features(path: str, datasets: Any) -> Any:
    """Every column as text: pandas would read a query '42' as a number (and as 42.0 beside an empty cell)."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return datasets.Features({name: datasets.Value("string") for name in header})


def _load_dir(path: str, datasets: Any) -> Any:
    if not os.path.isfile(os.path.join(path, "dataset_info.json")) and not os.path.isfile(
            os.path.join(path, "dataset_dict.json")):
        raise ArgumentError(f"dataset {path!r} is a directory but not one written by `datasets.save_to_disk`")
    data = datasets.load_from_disk(path)
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1 and "train" not in data:
            raise ArgumentError(f"dataset {path!r} has splits {', '.join(data)}: save the one to use on its own")
        data = data["train"] if "train" in data else next(iter(data.values()))
    return data


def _load_hub(source: str, use_hf: bool, datasets: Any) -> Any:
    """`owner/name[:subset]`: Hugging Face through `datasets` itself; ModelScope as a snapshot `datasets` reads."""
    repo, _, subset = source.partition(":")
    hub = "Hugging Face" if use_hf else "ModelScope"
    logger.info("Loading dataset %s from %s...", source, hub)
    try:
        if use_hf:
            return datasets.load_dataset(repo, subset or None, split="train")
        from modelscope import dataset_snapshot_download

        return datasets.load_dataset(dataset_snapshot_download(repo), subset or None, split="train")
    except Exception as e:  # network, hub or layout errors
        raise ArgumentError(f"cannot load dataset {source!r} from {hub}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

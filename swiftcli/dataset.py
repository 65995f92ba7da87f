"""The one data layer: `--dataset` / `--val_dataset` items -> rows of OpenAI messages, sampled and split.

sft trains on these rows, `swift infer` evaluates on them and export calibrates with them, so every command sees
the same rows under the same keys, split the same way. Files and hub datasets are read by the `datasets` library;
a row that can't be used becomes a `Row` with an `error` (reported, counted), never a failed load.
"""
from __future__ import annotations

import ast
import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .errors import ArgumentError
from .protocol import History, Messages, normalize_messages, to_history, to_messages

logger = logging.getLogger("swiftcli")

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File extension -> the `datasets` builder that reads it."""
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Row:
    """One conversation; `messages` ends with the label (the reply to learn, or to compare with) when it has one."""

    key: str
    """`<dataset>:<row index in it>`, the same in every run; `+n` marks the n-th extra copy of an upsampled row."""
    messages: Messages = field(default_factory=list)
    error: str | None = None
    """Why the row can't be used (then `messages` is empty)."""

    @property
    def label(self) -> str | None:
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else None

    @property
    def prompt(self) -> Messages:
        """What the model answers: the messages before the label."""
        return self.messages[:-1] if self.label is not None else self.messages

    @property
    def query(self) -> tuple[str | None, str | None, History]:
        """(system, query, history): the prompt in ms-swift's shape, as results files record it."""
        if not self.messages:
            return None, None, []
        system, history = to_history(self.prompt)
        return system, self.prompt[-1]["content"], history


# ---- one format per function: a raw item -> messages (ArgumentError says what is wrong with it) ------------------
def _text(item: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = item.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise ArgumentError(f"`{name}` is missing")
    if not isinstance(value, str):
        raise ArgumentError(f"`{name}` must be a string, got {type(value).__name__}")
    return value


def _history(value: Any) -> History:
    """[[query, response], ...]; a string (how csv holds it) is parsed first."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError):
            raise ArgumentError("`history` is not a list of [query, response] pairs") from None
    if not isinstance(value, list) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            for pair in value):
        raise ArgumentError("`history` must be a list of [query, response] string pairs")
    return [list(pair) for pair in value]


def _with_reply(messages: Messages, reply: str | None) -> Messages:
    return messages + [{"role": "assistant", "content": reply}] if reply else messages


def from_swift(item: dict[str, Any]) -> Messages:
    """ms-swift: query, response, history, system."""
    messages = to_messages(_text(item, "query", required=True), _history(item.get("history")), _text(item, "system"))
    return _with_reply(messages, _text(item, "response"))


def from_alpaca(item: dict[str, Any]) -> Messages:
    """alpaca: instruction, input (on a new line after it), output, system, history (ms-swift's AlpacaPreprocessor)."""
    instruction, extra = _text(item, "instruction", required=True), _text(item, "input")
    query = f"{instruction}\n{extra}" if extra else instruction
    messages = to_messages(query, _history(item.get("history")), _text(item, "system"))
    return _with_reply(messages, _text(item, "output"))


def from_openai(item: dict[str, Any]) -> Messages:
    """OpenAI: messages [{role, content}, ...] (normalize_messages checks roles, order and content), system."""
    messages = item.get("messages")
    if not isinstance(messages, list):
        raise ArgumentError("`messages` must be a list of {role, content}")
    return _with_system(messages, _text(item, "system"))


def from_sharegpt(item: dict[str, Any]) -> Messages:
    """sharegpt: conversations [{from: human|gpt|system, value}, ...], system."""
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ArgumentError("`conversations` must be a list of {from, value}")
    messages = []
    for turn in turns:
        if turn.get("from") not in SHAREGPT_ROLES:
            raise ArgumentError(f"`from` must be one of {', '.join(SHAREGPT_ROLES)}, got {turn.get('from')!r}")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")})
    return _with_system(messages, _text(item, "system"))


def from_conversation(item: dict[str, Any]) -> Messages:
    """ms-swift's other sharegpt: conversation [{human, assistant}, ...], system."""
    pairs = item.get("conversation")
    if isinstance(pairs, str):  # how csv holds it
        try:
            pairs = ast.literal_eval(pairs)
        except (ValueError, SyntaxError):
            pairs = None
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, dict) for p in pairs):
        raise ArgumentError("`conversation` must be a non-empty list of {human, assistant}")
    messages: Messages = []
    for i, pair in enumerate(pairs):
        human, assistant = pair.get("human"), pair.get("assistant")
        if not isinstance(human, str) or not (isinstance(assistant, str) or assistant is None and i == len(pairs) - 1):
            raise ArgumentError("`conversation` turns must be {human: text, assistant: text}")
        messages += [{"role": "user", "content": human}] + _with_reply([], assistant)
    return _with_system(messages, _text(item, "system"))


def _with_system(messages: Messages, system: str | None) -> Messages:
    """A row's top-level `system` as the first message; one that contradicts a system message is an error."""
    if system is None:
        return messages
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    if first.get("role") == "system":
        if first.get("content") != system:
            raise ArgumentError("`system` differs from the row's own system message: keep one of them")
        return messages
    return [{"role": "system", "content": system}] + messages


@dataclass(frozen=True)
class Format:
    """A row format: the keys that identify it (any one present and non-null) and every key it reads."""

    name: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    convert: Callable[[dict[str, Any]], Messages]


FORMATS = [
    Format("messages (OpenAI)", ("messages",), ("messages", "system"), from_openai),
    Format("conversations (sharegpt)", ("conversations",), ("conversations", "system"), from_sharegpt),
    Format("conversation (sharegpt)", ("conversation",), ("conversation", "system"), from_conversation),
    Format("instruction/input/output (alpaca)", ("instruction",), ("instruction", "input", "output", "system",
                                                                     "history"), from_alpaca),
    Format("query/response (ms-swift)", ("query", "response"), ("query", "response", "history", "system"),
           from_swift),
]
"""Every row format, told apart per row: a file (or a hub dataset) may mix them."""
FORMAT_KEYS = {key for fmt in FORMATS for key in fmt.keys}
FORMAT_FIELDS = {key for fmt in FORMATS for key in fmt.fields}

_EXPECTED = ("expected query/response (ms-swift), messages (OpenAI), instruction/input/output (alpaca) or "
             "conversations / conversation (sharegpt)")


UNSUPPORTED_FIELDS = ("tools", "images", "videos", "audios")
"""ms-swift row fields for agents and multimodal models, which text-only rows here would silently lose."""


def row_format(item: dict[str, Any]) -> Format:
    """The format of one row, from the keys it holds (present and non-null: `datasets` gives every row of a file
    every column, null where the row had none). A format field the row's format does not read is an error, not
    silently dropped."""
    present = [key for key in item if key in FORMAT_FIELDS and item[key] is not None]
    matches = [fmt for fmt in FORMATS if set(fmt.keys) & set(present)]
    if not matches:
        held = [key for key, value in item.items() if value is not None]
        raise ArgumentError(f"no known format (keys: {', '.join(held) or 'none'}): {_EXPECTED}")
    if len(matches) > 1:
        raise ArgumentError(f"the row mixes formats: {' and '.join(f'`{m.keys[0]}`' for m in matches)}")
    fmt = matches[0]
    unsupported = [key for key in UNSUPPORTED_FIELDS if item.get(key) not in (None, "", "[]", [])]
    if unsupported:
        raise ArgumentError(f"{', '.join(f'`{k}`' for k in unsupported)}: agent and multimodal rows are not supported")
    unread = [key for key in present if key not in fmt.fields and item[key] not in ("", [])]
    if unread:
        raise ArgumentError(f"{', '.join(f'`{k}`' for k in unread)} is not a field of the {fmt.name} format "
                            f"(it reads {', '.join(fmt.fields)})")
    return fmt


def check_columns(columns: list[str], source: str) -> None:
    """A dataset none of whose columns names a format is refused whole (a wrong file, not bad rows)."""
    if not FORMAT_KEYS & set(columns):
        raise ArgumentError(f"dataset {source!r} has no known format (columns: {', '.join(columns) or 'none'}): "
                            f"{_EXPECTED}")


def to_row(key: str, item: dict[str, Any]) -> Row:
    try:
        messages = normalize_messages(row_format(item).convert(item))
        if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]  # an empty reply is no label
        query = messages[-1] if messages[-1]["role"] == "user" else messages[-2]
        if not query["content"].strip():
            raise ArgumentError("the query is empty")
    except ArgumentError as e:
        return Row(key, error=str(e))
    return Row(key, messages)


# ---- sources -------------------------------------------------------------------------------------------------
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


# ---- rows, sampling and the split ------------------------------------------------------------------------------
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

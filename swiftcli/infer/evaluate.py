"""`swift infer` over a dataset: every validation row through the engine, each result appended to a jsonl file as
it finishes, a summary with metrics at the end, and `--resume` to finish an interrupted run.

Rows are checked and encoded one by one before anything is generated, so a bad row (missing fields, an empty
query, a prompt over the context) becomes an error line instead of failing the batch it would have been in. Both
engines batch continuously, so the rows go in through `infer_async`, as many at once as the engine runs
(--max_batch_size for pt, --max_num_seqs for vllm): each result is written the moment it finishes, and an
interrupted run loses only those rows in flight.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..arguments import METRICS, InferArguments
from ..dataset import Row, get_val_dataset, sample_rows
from ..engine import InferEngine, get_engine, print_banner
from ..errors import ArgumentError, SwiftError
from ..protocol import InferRequest, InferResponse
from ..reasoning import split_reasoning
from .metrics import compute_metrics
from .results import SEPARATOR, result_path

logger = logging.getLogger("swiftcli")

RESULT_FIELDS = ("key", "system", "query", "history", "response", "reasoning", "label", "prompt_tokens",
                 "completion_tokens", "latency_s", "finish_reason", "error")
"""One line of the results file; `key` is the row's stable key (what --resume skips by); a reasoning model's
thinking is in `reasoning`, apart from the `response` that is scored."""


@dataclass
class Item:
    """A row ready for the engine, or the reason it can't go there."""

    row: Row
    request: InferRequest | None = None
    prompt_tokens: int | None = None
    error: str | None = None


Record = Callable[[Item, InferResponse | None, str | None, float | None], None]
"""Called with each row's outcome: (item, response, error, latency in seconds)."""


def run_infer_dataset(args: InferArguments) -> dict[str, Any]:
    """The dataset and the results file are checked before the model loads; returns the summary."""
    rows = validation_rows(args)
    path = None if args.save_result is False else (args.result_path or result_path(args))
    previous = read_results(path) if args.resume else []
    engine = get_engine(args)
    print_banner(engine)
    return evaluate(engine, args, rows, path, previous)


def validation_rows(args: InferArguments) -> list[Row]:
    rows = get_val_dataset(args, args.use_hf)
    if 0 <= args.show_dataset_sample < len(rows):
        rows = sample_rows(rows, args.show_dataset_sample, args.dataset_seed)
    source = ", ".join(args.val_dataset) or (f"{', '.join(args.dataset)} (held out: ratio {args.dataset_test_ratio}, "
                                             f"seed {args.dataset_seed})")
    logger.info("val_dataset: %d rows of %s", len(rows), source)
    return rows


def read_results(path: str) -> list[dict[str, Any]]:
    """The lines an earlier run wrote. A last line cut short by a kill is removed from the file, so appends stay
    one JSON per line."""
    if not os.path.exists(path):
        logger.info("--resume: %s does not exist yet, starting from the first row", path)
        return []
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning("--resume: dropping an unfinished last line of %s", path)
            f.truncate(end)
    lines = []
    for number, text in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if not isinstance(line, dict) or "key" not in line:
            raise ArgumentError(f"--result_path {path}: line {number} is not a result of `swift infer` on a dataset")
        lines.append(line)
    return lines


# ---- the run ---------------------------------------------------------------------------------------------------
def evaluate(engine: InferEngine, args: InferArguments, rows: list[Row], path: str | None = None,
             previous: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Run the rows that `previous` lacks, append their results to `path`, then write and print the summary."""
    done = {line["key"] for line in previous}
    todo = [row for row in rows if row.key not in done]
    if previous:
        logger.info("--resume: %d rows already in %s, %d to go", len(rows) - len(todo), path, len(todo))
    verbose = args.verbose if args.verbose is not None else len(rows) < 20
    recorder = Recorder(path, verbose, engine.template.reasoning_parser)
    try:
        with recorder.progress(len(todo)):
            items = [prepare(engine, row, args.default_adapter) for row in todo]
            for item in items:
                if item.error is not None:
                    recorder.record(item, None, item.error, None)
            ready = [item for item in items if item.error is None]
            at_once = args.max_num_seqs if engine.info.backend == "vllm" else args.max_batch_size
            asyncio.run(generate(engine, ready, at_once, recorder.record))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM / SIGHUP (swift's handler raises SystemExit)
        if path:
            print(f"Interrupted: {len(previous) + len(recorder.lines)} rows are in {path}; finish the run with "
                  f"--resume true --result_path {path}", file=sys.stderr)
        raise
    finally:
        recorder.close()
    summary = summarize(list(previous) + recorder.lines, recorder, args.metric or list(METRICS))
    if path:
        summary["result_path"] = path
        with open(os.path.splitext(path)[0] + ".summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, ensure_ascii=False, indent=2)
    print_summary(summary)
    return summary


def prepare(engine: InferEngine, row: Row, adapter: str | None = None) -> Item:
    """The request, encoded once to find rows that can't run (the engine encodes again; it is cheap)."""
    if row.error is not None:
        return Item(row, error=row.error)
    try:
        request = InferRequest(messages=row.prompt, adapter=adapter)
        prompt_tokens = len(engine.encode(request).input_ids)
        engine.resolve_config(None, prompt_tokens)  # ContextLengthError when no room is left for a reply
    except SwiftError as e:
        return Item(row, prompt_tokens=getattr(e, "prompt_tokens", None), error=str(e))
    return Item(row, request, prompt_tokens)


async def generate(engine: InferEngine, items: list[Item], at_once: int, record: Record) -> None:
    """Every item through the engine, `at_once` in flight (a finished row's slot goes to the next one at once)."""
    slots = asyncio.Semaphore(at_once)

    async def one(item: Item) -> None:
        async with slots:
            began = time.perf_counter()
            try:
                response, error = await engine.infer_async(item.request), None
            except SwiftError as e:  # this row fails, the run goes on
                response, error = None, str(e)
            record(item, response, error, time.perf_counter() - began)

    await asyncio.gather(*(one(item) for item in items))


@dataclass
class Recorder:
    """Appends each result to the file as it comes (flushed: a kill loses only the rows in flight), prints it
    when verbose, and keeps the progress bar's rows/s and tokens/s."""

    path: str | None
    verbose: bool
    reasoning_parser: str | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    _file: Any = field(default=None, init=False, repr=False)
    _bar: Any = field(default=None, init=False, repr=False)
    _task: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def progress(self, total: int) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("infer"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]}"),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                             redirect_stdout=sys.stdout.isatty())  # a piped stdout keeps the verbose rows
        self._task = self._bar.add_task("infer", total=total, speed="")
        self.started = time.perf_counter()
        return self._bar

    def record(self, item: Item, response: InferResponse | None, error: str | None, latency: float | None) -> None:
        system, query, history = item.row.query
        choice = response.choices[0] if response is not None else None
        reasoning, text = split_reasoning(self.reasoning_parser, choice.text) if choice else (None, None)
        line = {"key": item.row.key, "system": system, "query": query, "history": history,
                "response": text, "reasoning": reasoning, "label": item.row.label,
                "prompt_tokens": response.usage.prompt_tokens if response else item.prompt_tokens,
                "completion_tokens": response.usage.completion_tokens if response else None,
                "latency_s": None if latency is None else round(latency, 4),
                "finish_reason": choice.finish_reason if choice else None, "error": error}
        self.lines.append(line)
        self.completion_tokens += line["completion_tokens"] or 0
        if self._file is not None:
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._file.flush()
        if self.verbose:
            print_row(line)
        if self._bar is not None:
            elapsed = max(self.elapsed, 1e-9)
            self._bar.update(self._task, advance=1, speed=f"{len(self.lines) / elapsed:.2f} rows/s "
                                                          f"{self.completion_tokens / elapsed:.1f} tok/s")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def print_row(line: dict[str, Any]) -> None:
    print(f"[QUERY] {line['query']}")
    print(f"[ERROR] {line['error']}" if line["error"] is not None else f"[RESPONSE] {line['response']}")
    if line["label"] is not None:
        print(f"[LABELS] {line['label']}")
    print(SEPARATOR, flush=True)


# ---- summary and metrics ---------------------------------------------------------------------------------------
def summarize(lines: list[dict[str, Any]], recorder: Recorder, metrics: Sequence[str]) -> dict[str, Any]:
    """Counts over the whole file (resumed rows included); throughput of this run; metrics of the labelled rows."""
    ok = [line for line in lines if line["error"] is None]
    scored = [line for line in ok if line["label"] is not None]
    elapsed = recorder.elapsed
    return {"rows": len(lines), "errors": len(lines) - len(ok), "labelled": len(scored),
            "prompt_tokens": sum(line["prompt_tokens"] or 0 for line in ok),
            "completion_tokens": sum(line["completion_tokens"] or 0 for line in ok),
            "run_rows": len(recorder.lines), "run_seconds": round(elapsed, 3),
            "rows_per_s": round(len(recorder.lines) / elapsed, 3) if elapsed > 0 else None,
            "tokens_per_s": round(recorder.completion_tokens / elapsed, 2) if elapsed > 0 else None,
            "metrics": compute_metrics([line["response"] for line in scored], [line["label"] for line in scored],
                                       metrics) if scored else {}}


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("", "", title="swift infer: dataset results", show_header=False)
    table.add_row("rows", f"{summary['rows']} ({summary['errors']} errors, {summary['labelled']} with labels)")
    table.add_row("this run", f"{summary['run_rows']} rows in {summary['run_seconds']:.1f} s: "
                              f"{summary['rows_per_s']} rows/s, {summary['tokens_per_s']} tokens/s")
    for name, value in summary["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    if summary.get("result_path"):
        table.add_row("results", summary["result_path"])
    Console().print(table)

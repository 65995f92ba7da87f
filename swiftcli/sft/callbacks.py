"""What a run shows and leaves behind besides the weights: progress, logging.jsonl, args.json in checkpoints, plots.

Each is a transformers `TrainerCallback` that acts on the main process only, so a multi-process run writes once.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from transformers import TrainerCallback

from ..checkpoint import write_ckpt_args

LOG_KEYS = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")


def format_log(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """`step 10/111 | loss 2.3141 | learning_rate 4.9e-04 | ...`: the usual keys first, numbers kept short."""
    keys = [k for k in LOG_KEYS if k in logs] + sorted(k for k in logs if k not in LOG_KEYS)
    parts = [f"step {step}/{max_steps}"]
    for key in keys:
        value = logs[key]
        if isinstance(value, float):
            value = f"{value:.2e}" if key == "learning_rate" else f"{value:.4g}"
        parts.append(f"{key} {value}")
    return " | ".join(parts)


class RichProgressCallback(TrainerCallback):
    """A rich progress bar over the batches (each forward/backward pass), with the optimizer step, elapsed time and
    ETA, and each log above it as one line (stderr). It moves every batch, not every optimizer step: an optimizer step
    is --gradient_accumulation_steps batches (16 by default), minutes apart on a CPU."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None
        self.accumulation = 1
        self.batches_per_epoch = 0
        """This process's batches in an epoch (0: unknown)."""
        self.substeps = 0
        """Batches done in the optimizer step under way."""

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.accumulation = max(1, args.gradient_accumulation_steps)
        dataloader = kwargs.get("train_dataloader")
        self.batches_per_epoch = len(dataloader) if dataloader is not None else 0
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.fields[position]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True), speed_estimate_period=3600)
        self.task = self.progress.add_task("train", total=self._batches(state.max_steps), position="")
        self.substeps = 0
        self._update(state)
        self.progress.start()

    def _batches(self, steps: int) -> int:
        """Batches the Trainer runs for the first `steps` optimizer steps: an epoch's last step takes what is left of
        the epoch (6 batches at accumulation 4: steps of 4 and 2)."""
        if not self.batches_per_epoch:
            return steps * self.accumulation
        steps_per_epoch = -(-self.batches_per_epoch // self.accumulation)
        epochs, rest = divmod(steps, steps_per_epoch)
        return epochs * self.batches_per_epoch + rest * self.accumulation

    def _update(self, state) -> None:
        done = self._batches(state.global_step) + self.substeps
        position = f"batch {done}/{self._batches(state.max_steps)} | step {state.global_step}/{state.max_steps}"
        self.progress.update(self.task, completed=done, position=position)

    def on_substep_end(self, args, state, control, **kwargs) -> None:
        if self.progress:
            self.substeps += 1
            self._update(state)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self.progress:
            self.substeps = 0
            self._update(state)

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if self.progress and logs:
            self.progress.console.print(format_log(logs, state.global_step, state.max_steps), highlight=False,
                                        soft_wrap=True)

    def on_save(self, args, state, control, **kwargs) -> None:
        if self.progress:
            self.progress.console.print(f"saved {checkpoint_dir(args, state)}", highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


class JsonlLogCallback(TrainerCallback):
    """Every log (training loss, validation loss, the final summary) as one JSON line in <run>/logging.jsonl."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero and logs:
            record = {**logs, "step": state.global_step, "max_steps": state.max_steps,
                      "elapsed_s": round(time.time() - self.start, 1)}
            append_jsonl(self.path, record)


class ThroughputCallback(TrainerCallback):
    """Training speed and memory for the final summary: non-padding tokens per second over the second half of the
    optimizer steps (the first ones load and tune kernels: on a fresh GPU machine, seconds per step for the first few),
    leaving out steps that follow a save or an evaluation, and each process's peak GPU memory
    (torch.cuda.max_memory_allocated).

    Needs TrainingArguments(include_num_input_tokens_seen="non_padding"): the Trainer then sums the attention masks
    of every process's batches into state.num_input_tokens_seen (global, all processes together).
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.steps = 0
        self._last: tuple[float, int] | None = None  # (time, tokens seen) at the previous step's end
        self._skip_next = False  # the step after a save or an evaluation
        self._warm_from = 1  # the first step timed

    @staticmethod
    def _cuda() -> Any:
        import torch

        return torch.cuda if torch.cuda.is_available() else None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        cuda = self._cuda()
        if cuda:
            cuda.reset_peak_memory_stats()
        self._last = (time.perf_counter(), state.num_input_tokens_seen)
        self._warm_from = state.global_step + (state.max_steps - state.global_step) // 2 + 1

    def on_step_end(self, args, state, control, **kwargs) -> None:
        now, seen = time.perf_counter(), state.num_input_tokens_seen
        if self._last is not None and not self._skip_next and state.global_step >= self._warm_from:
            self.tokens += seen - self._last[1]
            self.seconds += now - self._last[0]
            self.steps += 1
        self._last, self._skip_next = (now, seen), False

    def on_save(self, args, state, control, **kwargs) -> None:
        self._skip_next = True

    def on_evaluate(self, args, state, control, **kwargs) -> None:
        self._skip_next = True

    def summary(self, world_size: int) -> dict[str, Any]:
        """Tokens/s (all processes, and per process) and every process's peak GPU memory in GiB (None on CPU).
        Collective in a multi-process run: every rank must call it."""
        tokens_per_second = self.tokens / self.seconds if self.seconds > 0 else None
        cuda = self._cuda()
        peak = round(cuda.max_memory_allocated() / 2**30, 2) if cuda else None
        peaks = [peak]
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            peaks = [None] * dist.get_world_size()
            dist.all_gather_object(peaks, peak)
        return {"train_tokens_per_second": round(tokens_per_second, 1) if tokens_per_second else None,
                "train_tokens_per_second_per_process": round(tokens_per_second / world_size, 1)
                if tokens_per_second else None,
                "timed_steps": self.steps, "peak_gpu_memory_gib": peaks if cuda else None}


def format_throughput(summary: dict[str, Any], world_size: int) -> str:
    """`train tokens/s: <all> (<per process> per process x <N>, <K> timed steps) | peak GPU memory (GiB, per rank):
    <rank 0>, <rank 1>, ...` (the memory part on GPU only)."""
    speed = summary["train_tokens_per_second"]
    text = (f"train tokens/s: {speed} ({summary['train_tokens_per_second_per_process']} per process x {world_size}, "
            f"{summary['timed_steps']} timed steps)" if speed else "train tokens/s: n/a (no step timed)")
    if summary["peak_gpu_memory_gib"]:
        text += " | peak GPU memory (GiB, per rank): " + ", ".join(str(p) for p in summary["peak_gpu_memory_gib"])
    return text


class CheckpointArgsCallback(TrainerCallback):
    """args.json in every checkpoint, so `swift infer/export/deploy --ckpt_dir checkpoint-N` know what it is."""

    def __init__(self, saved_args: dict[str, Any]) -> None:
        self.saved_args = saved_args

    def on_save(self, args, state, control, **kwargs) -> None:
        if state.is_world_process_zero:
            write_ckpt_args(checkpoint_dir(args, state), self.saved_args)


def checkpoint_dir(args: Any, state: Any) -> str:
    """The directory Trainer just saved (its own naming)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")


def plot_loss(log_history: list[dict[str, Any]], path: str) -> str | None:
    """The training loss (and validation loss) over the steps as a PNG; None when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    val = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), "o--", label="validation loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

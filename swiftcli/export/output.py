"""What every export does the same way: the source model it starts from (with its dtype), a directory that appears
whole, progress, and args.json."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from ..arguments import ExportArguments
from ..checkpoint import read_ckpt_args, write_ckpt_args
from ..errors import ArgumentError
from ..model import dtype_name, load_model, load_tokenizer, resolve_model, to_torch_dtype
from ..registry import MODEL_MAPPING, ModelMeta

Step = Callable[[str], AbstractContextManager[None]]
"""`with step("Merging"):` shows one progress line (`progress_steps`)."""


class Source(NamedTuple):
    """The model an export starts from: --model_type / --model_id_or_path (a LoRA's base), in --dtype."""

    meta: ModelMeta
    model_dir: str
    dtype: str
    """bf16/fp16/fp32: --dtype, else the checkpoint's own (`export_dtype`)."""


def resolve_source(args: ExportArguments) -> Source:
    """Find (or download) the source model and settle its dtype, without loading it."""
    meta, model_dir = resolve_model(args.model_type, args.model_id_or_path, args.model_revision, args.use_hf)
    return Source(meta, model_dir, export_dtype(args.dtype, model_dir))


def load_source(source: Source, step: Step, tokenizer_dir: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of the source, the model on CPU: exports rewrite weights, they don't run them on a GPU.
    `tokenizer_dir`: a LoRA checkpoint's own tokenizer (it may carry a changed chat template)."""
    meta, model_dir, dtype = source
    with step(f"Loading {meta.model_type} ({dtype}) from {model_dir}"):
        model = load_model(model_dir, to_torch_dtype(dtype), "cpu", meta.trust_remote_code)
        tokenizer = load_tokenizer(tokenizer_dir or model_dir, meta.trust_remote_code)
    return model, tokenizer


@contextlib.contextmanager
def staged_dir(target: str, overwrite: bool) -> Iterator[str]:
    """A temp dir beside `target` that becomes `target` by a rename when the block succeeds.

    On any error (Ctrl-C included) the temp dir is removed, so a reader never sees a half-written export and an
    existing `target` is only replaced once the new one is complete.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the export private to this user
    try:
        yield tmp
        if os.path.lexists(target):
            if not overwrite:
                raise ArgumentError(f"output directory {target} appeared during the export: not replacing it")
            old = tmp + ".old"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def progress_steps() -> Iterator[Step]:
    """`with step("Merging"):` blocks shown as rich progress lines (spinner, then elapsed time) on stderr."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        @contextlib.contextmanager
        def step(description: str) -> Iterator[None]:
            task = progress.add_task(description, total=1)
            yield
            progress.update(task, completed=1)

        yield step


def checkpoint_dtype(model_dir: str) -> str:
    """The dtype a checkpoint's config.json declares, as bf16/fp16/fp32 (fp32 when it declares none)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    declared = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype_name(declared) or "fp32"


def export_dtype(dtype: str, model_dir: str) -> str:
    """--dtype when given, else the checkpoint's own: an export keeps the weights' precision unless told."""
    return checkpoint_dtype(model_dir) if dtype == "AUTO" else dtype


def write_export_args(out_dir: str, source_ckpt: str | None, meta: ModelMeta, template_type: str,
                      system: str | None, dtype: str, **extra: Any) -> None:
    """args.json so that `--ckpt_dir <out_dir>` restores model_type, template, system and dtype as full weights.

    The source checkpoint's own arguments are kept (datasets, seeds, ...); an unregistered model_type is left out
    because restoring it would fail the registry lookup (the template is recorded instead).
    """
    saved = read_ckpt_args(source_ckpt) if source_ckpt else {}
    saved.update(template_type=template_type, system=system, dtype=dtype, sft_type="full",
                 exported_from=source_ckpt, **extra)
    saved.pop("ckpt_dir", None)
    if meta.model_type in MODEL_MAPPING:
        saved["model_type"] = meta.model_type
    else:
        saved.pop("model_type", None)
    write_ckpt_args(out_dir, saved)

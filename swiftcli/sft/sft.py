"""`swift sft`: LoRA or full fine-tuning with transformers' Trainer and peft, into checkpoints the other commands load.

Data comes through the shared loaders and split (`swiftcli.dataset`), rows are encoded by the chat template (loss on
the replies only), and every checkpoint carries an args.json, so `swift infer --ckpt_dir checkpoint-N` needs nothing
else. Trainer does the loop, mixed precision, checkpoint rotation and resuming; peft does the LoRA.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import time
from typing import Any

from ..arguments import SftArguments, world_size
from ..checkpoint import write_ckpt_args
from ..dataset import absolute_spec
from ..errors import ArgumentError
from ..model import default_device, dtype_name, load_model, load_tokenizer, resolve_model, resolve_torch_dtype
from ..registry import MODEL_MAPPING, ModelMeta
from ..template import IGNORE_INDEX, Template, get_template
from .callbacks import (CheckpointArgsCallback, JsonlLogCallback, RichProgressCallback, ThroughputCallback,
                        append_jsonl, checkpoint_dir, format_throughput, plot_loss)
from . import fsdp
from .data import encode_rows, training_rows
from .lora import prepare_model

logger = logging.getLogger("swiftcli")


def train_sft(args: SftArguments) -> dict[str, Any]:
    """Train in this process (alone, or as one worker of a launch), and return where the last and best checkpoints
    are (also printed and appended to logging.jsonl)."""
    from transformers import set_seed

    if importlib.util.find_spec("matplotlib") is None:  # needed for the loss curve at the end: fail before training
        raise ArgumentError("swift sft needs matplotlib for its loss curve: pip install 'swiftcli[train]'")
    set_seed(args.seed)
    meta, model_dir = resolve_model(args.model_type, args.model_id_or_path, args.model_revision, args.use_hf)
    tokenizer = load_tokenizer(model_dir, meta.trust_remote_code)
    tokenizer.padding_side = "right"  # each row starts at position 0; the padding after it carries no loss
    template = training_template(args, meta, tokenizer)
    train_data, val_data = prepare_data(args, template)

    device = default_device()
    torch_dtype = resolve_torch_dtype(args.dtype, device, training=True)
    if args.sft_type == "full" and dtype_name(torch_dtype) == "fp16":
        raise ArgumentError("full fine-tuning can't keep fp16 weights (their gradients can't be unscaled): "
                            "use --dtype bf16 or fp32")
    saved = resolved_args(args, meta, template, dtype_name(torch_dtype))
    training_args = None
    if args.deepspeed:  # the Trainer's DeepSpeed config must exist before the model loads (ZeRO-3 loads it sharded)
        run_dir = start_run_dir(args, meta.model_type, device, saved)
        training_args = training_arguments(args, run_dir, saved["dtype"], has_val=bool(val_data))
    logger.info("Loading %s (%s) from %s...", meta.model_type, dtype_name(torch_dtype), model_dir)
    sharded = fsdp.load_kwargs(device, world_size()) if args.fsdp else {}  # CPU: sharded as it loads
    model = load_model(model_dir, torch_dtype, device, meta.trust_remote_code, device_map=None,  # Trainer places it
                       **sharded)
    model = prepare_model(model, args)

    if training_args is None:
        run_dir = start_run_dir(args, meta.model_type, device, saved)
        training_args = training_arguments(args, run_dir, saved["dtype"], has_val=bool(val_data))
    saved["save_only_model"] = training_args.save_only_model  # also set by FSDP on CPU: resume refuses these
    trainer = build_trainer(training_args, model, tokenizer, train_data, val_data, run_dir, saved)
    if is_main_process():
        log_effective_batch(args, training_args)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return finish(trainer, run_dir)


def log_effective_batch(args: SftArguments, training_args: Any) -> None:
    """Rows per optimizer step. One process that sees several GPUs gets the Trainer's torch.nn.DataParallel, which
    puts batch_size rows on each GPU: counted, and flagged (NPROC_PER_NODE is the fast way to use them)."""
    gpus = max(1, training_args.n_gpu) if world_size() == 1 else 1
    rows = world_size() * gpus * args.batch_size * args.gradient_accumulation_steps
    per_process = f"{gpus} GPUs (DataParallel) x batch_size {args.batch_size}" if gpus > 1 else \
        f"batch_size {args.batch_size}"
    logger.info("Effective batch: %d rows per optimizer step (%d processes x %s x gradient_accumulation_steps %d)",
                rows, world_size(), per_process, args.gradient_accumulation_steps)
    if gpus > 1:
        logger.warning("One process sees %d GPUs: the Trainer splits each batch over them with torch.nn.DataParallel "
                       "(slow). Use NPROC_PER_NODE=%d for data-parallel training, or CUDA_VISIBLE_DEVICES=0 for one "
                       "GPU", gpus, gpus)


# ---- data and template -----------------------------------------------------------------------------------------
def training_template(args: SftArguments, meta: ModelMeta, tokenizer: Any) -> Template:
    """The model's chat template (or --template_type) with --system; rows are fitted to max_length by encode_rows."""
    template_type = meta.template if args.template_type == "AUTO" else args.template_type
    template = get_template(template_type, tokenizer, default_system=args.system)
    if template.is_generation:
        raise ArgumentError(f"{meta.model_type} is a base model (template {template_type!r}): sft trains chat "
                            "templates; pass --template_type (e.g. chatml or default)")
    return template


def prepare_data(args: SftArguments, template: Template) -> tuple[list[dict], list[dict]]:
    """Encoded (train, val) rows; the counts of dropped and truncated rows are logged. No training row: an error."""
    max_length = args.max_length if args.max_length > 0 else None
    train_rows, val_rows = training_rows(args)
    train_data, stats = encode_rows(train_rows, template, max_length, args.truncation_strategy)
    logger.info("Training rows: %s%s", stats.summary(max_length),
                f" (self-cognition: {args.self_cognition_sample})" if args.self_cognition_sample else "")
    if not train_data:
        hint = " (raise --max_length or use --truncation_strategy truncation_left)" if stats.too_long else ""
        raise ArgumentError(f"no training rows left after encoding: {stats.summary(max_length)}{hint}")
    val_data, val_stats = encode_rows(val_rows, template, max_length, args.truncation_strategy)
    if val_rows:
        logger.info("Validation rows: %s", val_stats.summary(max_length))
    else:
        logger.info("No validation rows (--dataset_test_ratio 0 and no --val_dataset): no validation loss, no best "
                    "checkpoint")
    return train_data, val_data


# ---- run directory and args.json ---------------------------------------------------------------------------------
def is_main_process() -> bool:
    """Rank 0 of a multi-process launch, or a single process: the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def ddp_backend(args: SftArguments, device: str) -> str:
    return args.ddp_backend or ("nccl" if device == "cuda" else "gloo")


def start_run_dir(args: SftArguments, model_type: str, device: str, saved: dict[str, Any]) -> str:
    """The run directory with its args.json (written by the main process)."""
    run_dir = shared_run_dir(args, model_type, device)
    if is_main_process():
        write_ckpt_args(run_dir, saved)
        logger.info("Run directory: %s", run_dir)
    return run_dir


def shared_run_dir(args: SftArguments, model_type: str, device: str) -> str:
    """The run directory: made here, or in a multi-process run made by rank 0 and sent to the others (so that every
    node agrees on it), after joining the process group the Trainer then uses."""
    if world_size() == 1:
        return make_run_dir(args.output_dir, model_type)
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=ddp_backend(args, device))
    message: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            message = [("ok", make_run_dir(args.output_dir, model_type))]
        except ArgumentError as e:
            message = [("error", str(e))]
    dist.broadcast_object_list(message, src=0)
    status, text = message[0]
    if status == "error":
        raise ArgumentError(text)
    return text


def make_run_dir(output_dir: str, model_type: str) -> str:
    """<output_dir>/<model_type>/v<N>-<YYYYmmdd-HHMMSS>, N one above the highest version there (ms-swift's layout)."""
    parent = os.path.join(output_dir, model_type)
    while True:
        try:
            os.makedirs(parent, exist_ok=True)
            versions = [int(m.group(1)) for name in os.listdir(parent) if (m := re.match(r"v(\d+)-", name))]
            path = os.path.join(parent, f"v{max(versions, default=-1) + 1}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.makedirs(path)
            return path
        except FileExistsError:  # another run took this version at the same moment: take the next one
            continue
        except OSError as e:
            raise ArgumentError(f"cannot create a run directory under {output_dir}: {e.strerror}") from None


def resolved_args(args: SftArguments, meta: ModelMeta, template: Template, dtype: str) -> dict[str, Any]:
    """Every argument, with what AUTO and defaults resolved to: what `--ckpt_dir` and `--load_dataset_config` read.

    `system` is the default system prompt the rows were trained with: its text, '' for none, or null for the
    template's own (what a tokenizer's chat template writes when no system message is sent)."""
    saved = args.saved_args()
    model_id_or_path = args.model_id_or_path
    if model_id_or_path and os.path.exists(model_id_or_path):
        model_id_or_path = os.path.abspath(model_id_or_path)
    saved.update(model_type=meta.model_type if MODEL_MAPPING.get(meta.model_type) is meta else None,
                 model_id_or_path=model_id_or_path, template_type=template.template_type,
                 system="" if args.system == "" else template.default_system, dtype=dtype,
                 dataset=[absolute_spec(spec) for spec in args.dataset],
                 val_dataset=[absolute_spec(spec) for spec in args.val_dataset])
    return saved


# ---- the Trainer -------------------------------------------------------------------------------------------------
def build_trainer(training_args: Any, model: Any, tokenizer: Any, train_data: list[dict], val_data: list[dict],
                  run_dir: str, saved: dict[str, Any]) -> Any:
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer

    class SwiftTrainer(Trainer):
        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            if not fsdp.save_adapter_collectively(self, output_dir):
                super().save_model(output_dir, _internal_call)

    trainer = SwiftTrainer(
        model=model, args=training_args,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX),
        train_dataset=train_data, eval_dataset=val_data or None, processing_class=tokenizer,
        callbacks=[RichProgressCallback(), JsonlLogCallback(os.path.join(run_dir, "logging.jsonl")),
                   CheckpointArgsCallback(saved), ThroughputCallback()])
    trainer.remove_callback(PrinterCallback)  # RichProgressCallback prints the logs
    return trainer


def training_arguments(args: SftArguments, run_dir: str, dtype: str, has_val: bool) -> Any:
    """SftArguments in transformers' terms. Validation loss picks the best checkpoint, which rotation keeps."""
    from transformers import TrainingArguments

    from .deepspeed import deepspeed_config

    device = default_device()
    kwargs = dict(
        output_dir=run_dir, seed=args.seed, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type, warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio
        weight_decay=args.weight_decay, bf16=dtype == "bf16", fp16=dtype == "fp16",
        gradient_checkpointing=args.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=args.logging_steps, eval_strategy="steps" if has_val else "no", eval_steps=args.eval_steps,
        save_strategy="steps", save_steps=args.save_steps,
        save_total_limit=None if args.save_total_limit == -1 else args.save_total_limit,
        save_only_model=args.save_only_model,
        metric_for_best_model="loss" if has_val else None, greater_is_better=False if has_val else None,
        prediction_loss_only=True,  # validation needs the loss only, not every row's logits
        use_cpu=device == "cpu", ddp_backend=ddp_backend(args, device) if world_size() > 1 else None,
        deepspeed=deepspeed_config(args.deepspeed) if args.deepspeed else None,
        include_num_input_tokens_seen="non_padding",  # for the tokens/s of the summary (ThroughputCallback)
        remove_unused_columns=False, report_to="none", disable_tqdm=True)
    if args.fsdp:
        plan = fsdp.parse_fsdp(args.fsdp, args.fsdp_config)
        kwargs.update(fsdp.training_kwargs(plan, device, args.gradient_checkpointing))
    return TrainingArguments(**kwargs)


def finish(trainer: Any, run_dir: str) -> dict[str, Any]:
    """The loss plot, the last and best checkpoints, tokens/s and peak GPU memory: printed and appended to
    logging.jsonl (main process)."""
    state = trainer.state
    last = checkpoint_dir(trainer.args, state)
    throughput = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ThroughputCallback))
    speed = throughput.summary(world_size())  # collective: every rank takes part
    result = {"last_model_checkpoint": last if os.path.isdir(last) else None,
              "best_model_checkpoint": state.best_model_checkpoint, "best_metric": state.best_metric,
              "global_step": state.global_step, "world_size": world_size(), **speed}
    if not trainer.is_world_process_zero():
        return result
    plot = plot_loss(state.log_history, os.path.join(run_dir, "images", "train_loss.png"))
    append_jsonl(os.path.join(run_dir, "logging.jsonl"), result)
    if plot:
        logger.info("Loss curve: %s", plot)
    logger.info(format_throughput(speed, world_size()))
    print(f"last_model_checkpoint: {result['last_model_checkpoint']}", flush=True)
    print(f"best_model_checkpoint: {result['best_model_checkpoint']}", flush=True)
    return result

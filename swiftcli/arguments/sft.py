"""`swift sft`'s arguments: a model, datasets, and how to train (LoRA or full; one process, DDP, FSDP or DeepSpeed).

The --fsdp plan is parsed and checked here, before anything loads; sft/fsdp.py turns it into the Trainer's keys."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..checkpoint import read_ckpt_args
from ..errors import ArgumentError
from .base import check_choices, check_ranges, load_config_file
from .dataset import DatasetArguments
from .model import ModelArguments, TemplateArguments

DEEPSPEED_BUILTIN = ("zero2", "zero3")
"""--deepspeed's built-in configs (ms-swift's; sft/deepspeed.py writes them)."""
MODES = ("full_shard", "shard_grad_op")
OPTIONS = ("auto_wrap", "offload")


@dataclass
class FsdpPlan:
    """What `--fsdp` and `--fsdp_config` ask for, validated."""

    mode: str = "full_shard"
    offload: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    """Extra keys of transformers' `TrainingArguments.fsdp_config` (a JSON file's content)."""


def parse_fsdp(value: str, config: str | None) -> FsdpPlan:
    """`--fsdp 'full_shard auto_wrap offload'` (ms-swift's and transformers' words) or `--fsdp <config.json>`.

    Raises ArgumentError (one line) for an unknown word, an unreadable file, or two sharding modes."""
    words = value.split()
    plan = FsdpPlan()
    if len(words) == 1 and words[0].endswith(".json"):
        plan.config = read_json(words[0], "--fsdp")
        words = []
    if config:
        plan.config.update(read_json(config, "--fsdp_config"))
    for key in list(plan.config):  # transformers accepts fsdp_-prefixed keys too
        if key.startswith("fsdp_"):
            plan.config[key[5:]] = plan.config.pop(key)
    unknown = [w for w in words if w not in MODES + OPTIONS]
    if unknown:
        raise ArgumentError(f"--fsdp: unknown option {unknown[0]!r}; use {' or '.join(MODES)}, optionally with "
                            f"{' and '.join(OPTIONS)}, or a JSON config file")
    modes = [w for w in words if w in MODES]
    if len(modes) > 1:
        raise ArgumentError(f"--fsdp takes one sharding mode, got {' and '.join(modes)}")
    if modes:
        plan.mode = modes[0]
    elif "reshard_after_forward" in plan.config:
        plan.mode = "full_shard" if plan.config["reshard_after_forward"] else "shard_grad_op"
    plan.offload = "offload" in words or bool(plan.config.get("cpu_offload", False))
    return plan


def read_json(path: str, flag: str) -> dict[str, Any]:
    """An fsdp_config file (the JSON object the arguments' `--config` reader accepts), errors naming the flag."""
    try:
        return load_config_file(os.path.expanduser(path))
    except ArgumentError as e:
        raise ArgumentError(f"{flag}: {e}") from None


def check_plan(plan: FsdpPlan, device: str, processes: int, resume: bool) -> None:
    """Refuse what the chosen engine can't do, before any weight loads."""
    if processes < 2:
        raise ArgumentError("--fsdp shards across processes: launch them with NPROC_PER_NODE=N (N >= 2)")
    if device == "cpu":
        if plan.mode != "full_shard" or plan.offload:
            raise ArgumentError(f"--fsdp on CPU is full_shard only (transformers' FSDP2), got {plan.mode}"
                                f"{' offload' if plan.offload else ''}: use a CUDA machine for that")
        if resume:
            raise ArgumentError("--resume_from_checkpoint with --fsdp on CPU: transformers' load-time FSDP keeps no "
                                "optimizer state in checkpoints; start a new run (or train on CUDA)")


SFT_TYPES = ("lora", "full")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
                 "inverse_sqrt")
"""transformers' schedulers that need no extra arguments."""


def world_size() -> int:
    """Processes training together: torchrun's WORLD_SIZE inside a worker, NPROC_PER_NODE x NNODES before launch."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    return int(os.environ.get("NPROC_PER_NODE") or 1) * int(os.environ.get("NNODES") or 1)


@dataclass
class SftArguments(DatasetArguments, TemplateArguments, ModelArguments):
    sft_type: str = "lora"
    """lora (train a peft adapter, the base model frozen) or full (train every weight)."""
    max_length: int = 2048
    """Longest training row in tokens (-1: no limit); longer rows follow --truncation_strategy."""
    truncation_strategy: str = "delete"
    """A row over --max_length: 'delete' (drop it; counted in the log) or 'truncation_left' (drop its oldest tokens)."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: int = 32
    """LoRA scaling: the update is multiplied by alpha / r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["DEFAULT"])
    """Layers that get a LoRA: DEFAULT (the attention's q/k/v projections, by the model's own names), ALL (every linear
    layer but the output head) or module names, e.g. q_proj v_proj."""
    learning_rate: float | None = None
    """Peak learning rate (default: 1e-4 for lora, 1e-5 for full)."""
    num_train_epochs: float = 1
    """Passes over the training rows."""
    max_steps: int = -1
    """Stop after N optimizer steps; overrides --num_train_epochs (-1: off)."""
    batch_size: int = 1
    """Rows per device in one forward pass (training and evaluation)."""
    gradient_accumulation_steps: int | None = None
    """Forward passes per optimizer step (default: ceil(16 / batch_size / number of processes), as ms-swift)."""
    warmup_ratio: float = 0.05
    """Share of the steps over which the learning rate rises linearly from 0."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule after warmup: cosine, linear, constant, constant_with_warmup, cosine_with_restarts,
    polynomial or inverse_sqrt."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    logging_steps: int = 5
    """Log the training loss every N steps (console and logging.jsonl)."""
    eval_steps: int | None = None
    """Compute the validation loss every N steps (default: 50 for lora, 200 for full)."""
    save_steps: int | None = None
    """Write checkpoint-<step>/ every N steps, and at the end (default: --eval_steps)."""
    save_total_limit: int = 2
    """Keep the N newest checkpoints, plus the best one by validation loss (-1: keep all)."""
    save_only_model: bool = False
    """Checkpoints hold the weights (lora: the adapter) without optimizer, scheduler and RNG state: a fraction of the
    disk (a full fine-tune's AdamW state is twice the weights in fp32), but --resume_from_checkpoint can't continue
    from them."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: much less memory for about a third more compute."""
    seed: int = 42
    """Random seed of LoRA initialisation, data order and dropout (and of the split, unless --dataset_seed)."""
    output_dir: str = "output"
    """Runs go to <output_dir>/<model_type>/v<N>-<YYYYmmdd-HHMMSS>/."""
    resume_from_checkpoint: str | None = None
    """A checkpoint-<step>/ directory of an earlier run with the same arguments: training continues from there
    (weights, optimizer, scheduler, random state, position in the data) in a new run directory."""
    self_cognition_sample: int = 0
    """Mix N rows of the built-in zh/en self-cognition set ("who are you?") into the training rows."""
    model_name: list[str] = field(default_factory=list)
    """The model's name for self-cognition: Chinese then English, e.g. --model_name 小黄 'Xiao Huang'."""
    model_author: list[str] = field(default_factory=list)
    """Who made the model, for self-cognition: Chinese then English, e.g. --model_author 魔搭 ModelScope."""
    ddp_backend: str | None = None
    """Multi-process training (NPROC_PER_NODE=N): nccl or gloo (default: nccl on GPU, gloo on CPU)."""
    deepspeed: str | None = None
    """DeepSpeed ZeRO for multi-GPU training past one GPU's memory: zero2 (optimizer states and gradients sharded),
    zero3 (the weights too), or a DeepSpeed JSON config file. Needs `pip install deepspeed` and CUDA GPUs."""
    fsdp: str | None = None
    """Fully sharded data parallelism (PyTorch FSDP2) over NPROC_PER_NODE processes, for models past one device's
    memory: full_shard (weights, gradients and optimizer state sharded), shard_grad_op (weights kept whole from
    forward to backward), plus offload (CUDA: parameters in CPU memory); or an fsdp_config JSON file. On CPU (gloo)
    full_shard only."""
    fsdp_config: str | None = None
    """A JSON file of transformers' fsdp_config keys (e.g. {"cpu_ram_efficient_loading": true}) for --fsdp."""

    def __post_init__(self) -> None:
        if self.ckpt_dir:
            raise ArgumentError("sft trains --model_type / --model_id_or_path (a merged or full checkpoint works "
                                "there); to continue a run use --resume_from_checkpoint")
        super().__post_init__()
        self._validate_sft()
        self._fill_sft_defaults()

    def _validate_sft(self) -> None:
        check_choices(self, {"sft_type": SFT_TYPES, "lr_scheduler_type": LR_SCHEDULERS,
                             "ddp_backend": (None, "nccl", "gloo")})
        check_ranges(self, [("max_length", self.max_length == -1 or self.max_length >= 8),
                            ("lora_rank", self.lora_rank >= 1),
                   ("lora_alpha", self.lora_alpha > 0), ("lora_dropout", 0 <= self.lora_dropout < 1),
                   ("learning_rate", self.learning_rate is None or self.learning_rate > 0),
                   ("num_train_epochs", self.num_train_epochs > 0),
                   ("max_steps", self.max_steps == -1 or self.max_steps >= 1),
                   ("batch_size", self.batch_size >= 1),
                   ("gradient_accumulation_steps", (self.gradient_accumulation_steps or 1) >= 1),
                   ("warmup_ratio", 0 <= self.warmup_ratio < 1), ("weight_decay", self.weight_decay >= 0),
                   ("logging_steps", self.logging_steps >= 1), ("eval_steps", (self.eval_steps or 1) >= 1),
                   ("save_steps", (self.save_steps or 1) >= 1),
                   ("save_total_limit", self.save_total_limit == -1 or self.save_total_limit >= 1),
                   ("self_cognition_sample", self.self_cognition_sample >= 0),
                   ("dataset_test_ratio", 0 <= self.dataset_test_ratio < 1)])
        modules = self.lora_target_modules or ["DEFAULT"]
        if len(modules) > 1 and {"DEFAULT", "ALL"} & set(modules):
            raise ArgumentError(f"--lora_target_modules takes DEFAULT, ALL or module names, not a mix: {modules}")
        if not self.dataset and not self.self_cognition_sample:
            raise ArgumentError("nothing to train on: pass --dataset, or --self_cognition_sample N with --model_name "
                                "and --model_author")
        if self.self_cognition_sample:
            for name in ("model_name", "model_author"):
                values = getattr(self, name)
                if not 1 <= len(values) <= 2 or not all(v.strip() for v in values):
                    raise ArgumentError(f"--self_cognition_sample needs --{name} ZH EN (e.g. --model_name 小黄 "
                                        f"'Xiao Huang' --model_author 魔搭 ModelScope), got {values or 'none'}")
        if self.fsdp or self.fsdp_config:
            self._check_fsdp()
        if self.deepspeed:
            self._check_deepspeed()
        if self.resume_from_checkpoint:
            self.resume_from_checkpoint = os.path.abspath(os.path.expanduser(self.resume_from_checkpoint))
            if not os.path.isfile(os.path.join(self.resume_from_checkpoint, "trainer_state.json")):
                raise ArgumentError(f"--resume_from_checkpoint {self.resume_from_checkpoint} is not a training "
                                    "checkpoint (no trainer_state.json): pass a checkpoint-<step> directory")
            if read_ckpt_args(self.resume_from_checkpoint).get("save_only_model"):
                raise ArgumentError(f"--resume_from_checkpoint {self.resume_from_checkpoint} was saved with "
                                    "--save_only_model (no optimizer state to continue from): start a new run "
                                    "from its weights with --model_id_or_path (lora: merge it first)")
        self._check_output_dir()

    def _check_deepspeed(self) -> None:
        """A known config, the package and a GPU: checked before anything loads."""
        import importlib.util

        from ..model import default_device

        if self.deepspeed not in DEEPSPEED_BUILTIN:
            path = os.path.abspath(os.path.expanduser(self.deepspeed))
            if not (path.endswith(".json") and os.path.isfile(path)):
                raise ArgumentError(f"--deepspeed must be {' or '.join(DEEPSPEED_BUILTIN)} or a DeepSpeed JSON config "
                                    f"file, got {self.deepspeed!r}")
            try:
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            except (OSError, ValueError) as e:
                raise ArgumentError(f"--deepspeed {self.deepspeed}: not a readable JSON config ({e})") from None
            self.deepspeed = path
        if importlib.util.find_spec("deepspeed") is None:
            raise ArgumentError(f"--deepspeed {self.deepspeed} needs the deepspeed package: pip install deepspeed "
                                "(on a CUDA machine)")
        if default_device() != "cuda":
            raise ArgumentError(f"--deepspeed {self.deepspeed} needs CUDA GPUs: drop it to train on CPU")

    def _check_fsdp(self) -> None:
        """A readable plan that this device's FSDP engine can run (train/fsdp.py), checked before anything loads."""
        from ..model import default_device

        if self.deepspeed:
            raise ArgumentError("--fsdp and --deepspeed both shard the model: choose one")
        if self.fsdp_config and not self.fsdp:
            raise ArgumentError("--fsdp_config needs --fsdp")
        check_plan(parse_fsdp(self.fsdp, self.fsdp_config), default_device(), world_size(),
                   bool(self.resume_from_checkpoint))

    def _check_output_dir(self) -> None:
        """Fail now, not after loading the model, when the runs can't be written (the nearest existing ancestor)."""
        self.output_dir = os.path.abspath(os.path.expanduser(self.output_dir))
        path = self.output_dir
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
            raise ArgumentError(f"--output_dir {self.output_dir} is not writable ({path} is "
                                f"{'not a directory' if not os.path.isdir(path) else 'read-only'})")

    def _fill_sft_defaults(self) -> None:
        lora = self.sft_type == "lora"
        self.lora_target_modules = self.lora_target_modules or ["DEFAULT"]
        # one value names the model in both languages
        self.model_name, self.model_author = ([v[0], v[-1]] if v else [] for v in (self.model_name, self.model_author))
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if lora else 1e-5
        if self.gradient_accumulation_steps is None:
            self.gradient_accumulation_steps = max(1, -(-16 // (self.batch_size * world_size())))
        self.eval_steps = self.eval_steps or (50 if lora else 200)
        self.save_steps = self.save_steps or self.eval_steps


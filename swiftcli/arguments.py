"""Every command's arguments, declared once. The docstring under each field is its `--help` text.

`None` / 'AUTO' mean "not given": values restored from a checkpoint's `args.json` fill only those.
Validation happens here, in `__post_init__`, and nowhere else.
"""
from __future__ import annotations

import ast
import inspect
import json
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .checkpoint import adapter_base_model, check_adapter_dir, is_lora_dir, read_ckpt_args
from .errors import ArgumentError
from .model import use_hf_default
from .registry import get_model_meta

logger = logging.getLogger("swiftcli")

# Fields a checkpoint's args.json restores when the user left them unset (ms-swift's load_from_ckpt_dir).
RESTORED_FIELDS = ("model_type", "model_id_or_path", "model_revision", "template_type", "system", "dtype")
# ... and with --load_dataset_config, what rebuilds the training run's validation split.
DATASET_FIELDS = ("dataset", "val_dataset", "dataset_test_ratio", "dataset_seed", "train_dataset_sample",
                  "val_dataset_sample")
METRICS = ("acc", "rouge", "bleu")


@dataclass
class ModelArguments:
    model_type: str | None = None
    """Registered model type, e.g. qwen-7b-chat (see `swift list-models`). Default: smollm2-135m-instruct, embedded."""
    model_id_or_path: str | None = None
    """Hub id or local directory. Without --model_type the architecture and template are detected from its files."""
    model_revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    ckpt_dir: str | None = None
    """A checkpoint made by sft or export: full weights, or a LoRA adapter (served as `default-lora`)."""
    dtype: str = "AUTO"
    """AUTO, bf16, fp16 or fp32. AUTO: bf16 (fp16 if unsupported) on GPU, fp32 on CPU."""
    use_hf: bool | None = None
    """Download from Hugging Face instead of ModelScope (also env USE_HF=1)."""
    lora_modules: list[str] = field(default_factory=list)
    """Extra LoRA adapters as name=path, chosen per request by name."""
    log_level: str | None = None
    """DEBUG, INFO, WARNING or ERROR (default: env SWIFT_LOG_LEVEL, else INFO). DEBUG shows everything, vLLM's own
    log included; otherwise vLLM logs only warnings a user can act on."""


@dataclass
class TemplateArguments:
    template_type: str = "AUTO"
    """Chat template; AUTO takes the model's registered one ('auto' = the tokenizer's own chat_template)."""
    system: str | None = None
    """System prompt; default: the template's. Pass '' for none."""
    max_length: int = -1
    """Longest prompt in tokens (-1: the model's context)."""
    truncation_strategy: str = "delete"
    """Prompt over max_length: 'delete' (refuse it) or 'truncation_left' (drop the oldest tokens)."""


@dataclass
class GenerationArguments:
    max_new_tokens: int = 2048
    """Most tokens to generate per reply."""
    temperature: float | None = None
    """Sampling temperature; 0 = greedy. Default: the model's generation_config."""
    top_k: int | None = None
    """Sample from the k most likely tokens."""
    top_p: float | None = None
    """Nucleus sampling mass."""
    repetition_penalty: float | None = None
    """>1 discourages repeating tokens."""
    stop_words: list[str] = field(default_factory=list)
    """Extra strings that end a reply."""
    seed: int = 42
    """Random seed; with the same seed sampling is reproducible."""
    stream: bool = True
    """Print replies token by token."""


@dataclass
class DatasetArguments:
    dataset: list[str] = field(default_factory=list)
    """Datasets: local files (jsonl, json, csv, parquet), save_to_disk directories or hub ids, with `#N` sampling."""
    val_dataset: list[str] = field(default_factory=list)
    """Validation datasets (then nothing is split off --dataset)."""
    dataset_test_ratio: float | None = None
    """Share of --dataset held out for validation, default 0.01 (the same seeded split in sft and in evaluation)."""
    dataset_seed: int | None = None
    """Seed of the split and of sampling (default: --seed)."""
    train_dataset_sample: int | None = None
    """Use N training rows (default or -1: all)."""
    val_dataset_sample: int | None = None
    """Use N validation rows (default or -1: all)."""

    def fill_dataset_defaults(self, seed: int) -> None:
        """Defaults of the fields left unset: applied after a checkpoint's args.json had its say."""
        self.dataset_test_ratio = 0.01 if self.dataset_test_ratio is None else self.dataset_test_ratio
        self.dataset_seed = seed if self.dataset_seed is None else self.dataset_seed
        self.train_dataset_sample = -1 if self.train_dataset_sample is None else self.train_dataset_sample


@dataclass
class InferArguments(DatasetArguments, GenerationArguments, TemplateArguments, ModelArguments):
    infer_backend: str = "AUTO"
    """AUTO, vllm or pt (transformers). AUTO: vllm when installed and it supports the model, else pt."""
    max_model_len: int | None = None
    """Context length (prompt + reply); default: the model's."""
    max_batch_size: int = 16
    """pt backend: most requests decoded together."""
    torch_compile: bool | None = None
    """pt backend: torch.compile the static-cache decode step before it is captured in CUDA graphs. Default: on CUDA
    (the first request waits for the compilation), off on CPU."""
    save_result: bool | None = None
    """Save each turn to <result_dir>/infer_result/<time>.jsonl (default: on for datasets, off for the REPL)."""
    result_dir: str | None = None
    """Where infer_result/ goes (default: beside the checkpoint, else the current directory)."""
    # dataset evaluation (with --dataset / --val_dataset / --load_dataset_config)
    load_dataset_config: bool = False
    """With --ckpt_dir: evaluate on the validation rows its training run held out (datasets, ratio, seed: args.json)."""
    show_dataset_sample: int = -1
    """Evaluate N validation rows picked with --dataset_seed (-1: all)."""
    verbose: bool | None = None
    """Print [QUERY], [RESPONSE] and [LABELS] for every row (default: on below 20 rows)."""
    metric: list[str] = field(default_factory=list)
    """Scores against the labels: acc (exact match after normalising), rouge (ROUGE-L), bleu (BLEU-4). Default: all."""
    resume: bool = False
    """Continue the --result_path file: rows it already holds are skipped, the rest appended."""
    result_path: str | None = None
    """The results file (default: <result_dir>/infer_result/<time>.jsonl); an existing one needs --resume true."""
    # vLLM engine
    gpu_memory_utilization: float = 0.9
    """vllm: fraction of GPU memory for weights and KV cache."""
    tensor_parallel_size: int = 1
    """Split every layer over N processes (vllm: its own; pt: transformers' tensor-parallel plan, one process per
    GPU, or per CPU core with gloo)."""
    device_map: str | None = None
    """pt: place the layers over the visible GPUs in one process (accelerate's device_map, e.g. auto): a model larger
    than one GPU without --tensor_parallel_size."""
    max_num_seqs: int = 256
    """vllm: most sequences scheduled at once."""
    enforce_eager: bool | None = None
    """No CUDA graphs / torch.compile. Default: true on CPU (vllm: compiling takes minutes there), false on GPU, where
    the pt backend decodes from a static KV cache in CUDA graphs."""
    vllm_enable_lora: bool = False
    """vllm: serve LoRA adapters (the --ckpt_dir adapter and --lora_modules)."""
    vllm_max_lora_rank: int = 16
    """vllm: largest LoRA rank accepted."""
    max_loras: int = 1
    """vllm: LoRA adapters active in one batch."""
    vllm_engine_kwargs: str | None = None
    """vllm: other engine arguments as JSON, e.g. '{"swap_space": 4}'."""

    def __post_init__(self) -> None:
        if self.use_hf is None:
            self.use_hf = use_hf_default()
        if self.ckpt_dir:
            self._restore_from_ckpt()
        elif self.load_dataset_config:
            raise ArgumentError("--load_dataset_config true needs --ckpt_dir (the checkpoint of the training run)")
        self.fill_dataset_defaults(self.seed)
        self._validate()

    # ---- checkpoint restore ----------------------------------------------------------------------------------
    def _restore_from_ckpt(self) -> None:
        self.ckpt_dir = os.path.abspath(os.path.expanduser(self.ckpt_dir))
        saved = read_ckpt_args(self.ckpt_dir)
        if not saved:
            logger.warning("%s has no args.json: pass --model_type/--template_type if detection is wrong", self.ckpt_dir)
        for name in RESTORED_FIELDS:
            if name in saved and getattr(self, name) in (None, "AUTO"):
                setattr(self, name, saved[name])
        if self.load_dataset_config:
            if not saved.get("dataset") and not saved.get("val_dataset"):
                raise ArgumentError(f"--load_dataset_config: {self.ckpt_dir} records no dataset in its args.json")
            for name in DATASET_FIELDS:
                if name in saved and getattr(self, name) in (None, []):
                    setattr(self, name, saved[name])
        if self.is_lora_ckpt:
            if not self.model_type and not self.model_id_or_path:
                self.model_id_or_path = adapter_base_model(self.ckpt_dir)
        else:  # full or merged weights: the checkpoint itself is the model
            self.model_id_or_path = self.ckpt_dir

    @property
    def is_lora_ckpt(self) -> bool:
        return bool(self.ckpt_dir) and is_lora_dir(self.ckpt_dir)

    @property
    def default_adapter(self) -> str | None:
        """The adapter that REPL and dataset requests use: the --ckpt_dir LoRA, if that is what was given."""
        return "default-lora" if self.is_lora_ckpt else None

    @property
    def adapters(self) -> dict[str, str]:
        """name -> path of every LoRA to load: the --ckpt_dir adapter as 'default-lora', then --lora_modules."""
        adapters = {"default-lora": self.ckpt_dir} if self.is_lora_ckpt else {}
        for item in self.lora_modules:
            name, path = item.split("=", 1)
            adapters[name] = os.path.abspath(os.path.expanduser(path))
        return adapters

    # ---- validation ------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        choices = {"infer_backend": ("AUTO", "vllm", "pt"), "dtype": ("AUTO", "bf16", "fp16", "fp32"),
                   "truncation_strategy": ("delete", "truncation_left")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.model_type:
            get_model_meta(self.model_type)
        for item in self.lora_modules:
            if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]:
                raise ArgumentError(f"--lora_modules takes name=path, got {item!r}")
        for name, path in self.adapters.items():
            check_adapter_dir(name, path)
        if self.tensor_parallel_size > 1 and self.device_map:
            raise ArgumentError("--tensor_parallel_size and --device_map both split the model: choose one")
        numbers = [("max_new_tokens", self.max_new_tokens >= 1), ("max_batch_size", self.max_batch_size >= 1),
                   ("tensor_parallel_size", self.tensor_parallel_size >= 1),
                   ("max_model_len", self.max_model_len is None or self.max_model_len >= 16),
                   ("temperature", self.temperature is None or 0 <= self.temperature <= 2),
                   ("top_p", self.top_p is None or 0 < self.top_p <= 1),
                   ("dataset_test_ratio", 0 <= self.dataset_test_ratio <= 1),
                   ("show_dataset_sample", self.show_dataset_sample >= -1)]
        for name, ok in numbers:
            if not ok:
                raise ArgumentError(f"--{name} is out of range: {getattr(self, name)!r}")
        for name in self.metric:
            if name not in METRICS:
                raise ArgumentError(f"--metric takes {', '.join(METRICS)}, got {name!r}")
        if self.resume and (not self.result_path or self.save_result is False):
            raise ArgumentError("--resume true needs --result_path (the results file to continue) and saved results")
        if self.result_path and not self.resume and os.path.exists(self.result_path):
            raise ArgumentError(f"--result_path {self.result_path} exists: pass --resume true to continue it")

    def saved_args(self) -> dict[str, Any]:
        """What a checkpoint made from these arguments should record."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under a field), through the class hierarchy."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML file of arguments (`--config args.yaml`)."""
    if not os.path.isfile(path):
        raise ArgumentError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ArgumentError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{path} must hold a mapping of argument names to values")
    return data


@dataclass
class DeployArguments(InferArguments):
    host: str = "127.0.0.1"
    """Address to listen on. 127.0.0.1 keeps the server on this machine; 0.0.0.0 opens it to the network."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require `Authorization: Bearer <api_key>` on the /v1 routes (/health, /metrics and /version stay open)."""
    served_model_name: str | None = None
    """The base model's id in /v1/models and in requests' `model` (default: the model_type)."""
    owned_by: str = "swift"
    """`owned_by` of every /v1/models entry."""
    ssl_keyfile: str | None = None
    """TLS private key file (with --ssl_certfile: serve https)."""
    ssl_certfile: str | None = None
    """TLS certificate file."""
    max_concurrency: int | None = None
    """Most requests generating at once; the rest wait in line (default: no limit, the engine schedules)."""
    log_interval: float = 10
    """Seconds between throughput log lines (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.port <= 65535:
            raise ArgumentError(f"--port must be in 1..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ArgumentError("--api_key must not be empty")
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            raise ArgumentError("--ssl_keyfile and --ssl_certfile go together")
        for name in ("ssl_keyfile", "ssl_certfile"):
            if getattr(self, name) and not os.path.isfile(getattr(self, name)):
                raise ArgumentError(f"--{name} {getattr(self, name)!r} does not exist")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ArgumentError(f"--max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.log_interval < 0:
            raise ArgumentError(f"--log_interval must be >= 0, got {self.log_interval}")
        if self.served_model_name is not None and self.served_model_name in self.adapters:
            raise ArgumentError(f"--served_model_name {self.served_model_name!r} is also a LoRA name: "
                                "each model id must be unique")


QUANT_METHODS = ("bnb", "gptq", "awq")


@dataclass
class ExportArguments(InferArguments):
    merge_lora: bool = False
    """Merge the --ckpt_dir LoRA into its base model: full weights in <ckpt_dir>-merged that infer, deploy and vLLM
    load directly."""
    to_peft_format: bool = False
    """Convert an ms-swift LoRA checkpoint (adapter in default/) into a standard peft adapter in <ckpt_dir>-peft."""
    quant_bits: int = 0
    """Quantize to 4 or 8 bits (0: don't). With --merge_lora true: merge first, then quantize."""
    quant_method: str = "bnb"
    """bnb (bitsandbytes, runs on CPU), gptq (auto-round; slow on CPU) or awq (needs a CUDA GPU). ms-swift 2.x
    defaulted to awq."""
    quant_n_samples: int = 256
    """gptq: calibration blocks of --quant_seqlen tokens (from --dataset, else the built-in calibration set)."""
    quant_seqlen: int = 2048
    """gptq: tokens per calibration block."""
    quant_batch_size: int = 1
    """gptq: calibration blocks per forward pass."""
    quant_group_size: int | None = None
    """gptq: weights sharing one scale (default: the largest of 128, 64, 32 that divides every layer's input size,
    which vLLM requires)."""
    quant_iters: int | None = None
    """gptq/awq: auto-round tuning steps per layer block (default: auto-round's 200; hours on CPU for a 7B model).
    0: plain round-to-nearest, no tuning (seconds)."""
    output_dir: str | None = None
    """Where to write (default: <ckpt_dir>-merged, <ckpt_dir>-peft, or <ckpt_dir or model_type>-<method>-int<bits>)."""
    overwrite: bool = False
    """Replace an existing output directory instead of stopping with an error."""
    max_shard_size: str = "5GB"
    """Largest safetensors file of written weights, e.g. 5GB or 200MB."""
    dtype: str = "AUTO"
    """AUTO, bf16, fp16 or fp32: the dtype of the written weights. AUTO keeps the checkpoint's own (args.json's, else
    config.json's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_export()
        if self.output_dir is None:
            self.output_dir = self._default_output_dir()
        self.output_dir = os.path.abspath(os.path.expanduser(self.output_dir)) if self.output_dir else None
        self._check_output_dir()

    @property
    def is_msswift_lora_ckpt(self) -> bool:
        """ms-swift's own LoRA layout (tuner_backend swift): the adapter sits in default/, not in the checkpoint."""
        return bool(self.ckpt_dir) and os.path.isfile(os.path.join(self.ckpt_dir, "default", "adapter_config.json"))

    def _validate_export(self) -> None:
        if not (self.merge_lora or self.to_peft_format or self.quant_bits):
            raise ArgumentError("nothing to export: pass --merge_lora true, --to_peft_format true or --quant_bits 4|8")
        if self.quant_bits not in (0, 4, 8):
            raise ArgumentError(f"--quant_bits must be 0, 4 or 8, got {self.quant_bits}")
        if self.quant_method not in QUANT_METHODS:
            raise ArgumentError(f"--quant_method must be one of {', '.join(QUANT_METHODS)}, got {self.quant_method!r}")
        for name in ("quant_n_samples", "quant_seqlen", "quant_batch_size"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.quant_iters is not None and self.quant_iters < 0:
            raise ArgumentError(f"--quant_iters must be >= 0, got {self.quant_iters}")
        if self.quant_group_size is not None and self.quant_group_size not in (32, 64, 128):
            raise ArgumentError(f"--quant_group_size must be 32, 64 or 128, got {self.quant_group_size}")
        if self.to_peft_format:
            self._validate_to_peft_format()
        elif self.merge_lora:
            self._validate_merge_lora()
        elif self.ckpt_dir and (self.is_lora_ckpt or self.is_msswift_lora_ckpt):
            raise ArgumentError(f"{self.ckpt_dir} is a LoRA adapter: add --merge_lora true to merge it into its "
                                "base model, then quantize")
        if self.quant_bits:
            self._check_quant_backend()

    def _validate_to_peft_format(self) -> None:
        if self.merge_lora or self.quant_bits:
            raise ArgumentError("--to_peft_format runs on its own: convert first, then merge or quantize "
                                "<ckpt_dir>-peft in a second `swift export`")
        if not self.ckpt_dir:
            raise ArgumentError("--to_peft_format needs --ckpt_dir, an ms-swift LoRA checkpoint")
        if not (self.is_lora_ckpt or self.is_msswift_lora_ckpt):
            raise ArgumentError(f"{self.ckpt_dir} is not a LoRA checkpoint: neither adapter_config.json nor "
                                "default/adapter_config.json is there")

    def _validate_merge_lora(self) -> None:
        if not self.ckpt_dir:
            raise ArgumentError("--merge_lora needs --ckpt_dir, a LoRA checkpoint")
        if self.is_msswift_lora_ckpt:
            raise ArgumentError(f"{self.ckpt_dir} is in ms-swift's LoRA format: convert it with `swift export "
                                f"--ckpt_dir {self.ckpt_dir} --to_peft_format true`, then merge {self.ckpt_dir}-peft")
        if not self.is_lora_ckpt:
            raise ArgumentError(f"--merge_lora: {self.ckpt_dir} holds full weights (no adapter_config.json), "
                                "there is no LoRA to merge")
        if not any(os.path.isfile(os.path.join(self.ckpt_dir, name))
                   for name in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ArgumentError(f"{self.ckpt_dir} has adapter_config.json but no adapter_model.safetensors (or "
                                ".bin): the adapter weights are missing")

    def _check_quant_backend(self) -> None:
        """Fail before loading anything when the chosen method can't run here."""
        import importlib.util

        from .model import default_device

        if self.quant_method == "awq" and default_device() != "cuda":
            raise ArgumentError("--quant_method awq needs a CUDA GPU; on CPU use --quant_method bnb or gptq")
        if self.quant_method == "awq" and self.quant_bits != 4:
            raise ArgumentError("--quant_method awq quantizes to 4 bits only: pass --quant_bits 4")
        package = {"bnb": "bitsandbytes", "gptq": "auto_round", "awq": "auto_round"}[self.quant_method]
        if importlib.util.find_spec(package) is None:
            raise ArgumentError(f"--quant_method {self.quant_method} needs {package}: "
                                f"pip install {package.replace('_', '-')}")

    def _default_output_dir(self) -> str | None:
        """ms-swift's names, beside the input: -peft, -merged, -<method>-int<bits> (a model_type: in the cwd)."""
        if self.to_peft_format:
            return f"{self.ckpt_dir}-peft" if self.is_msswift_lora_ckpt else None  # already peft: nothing to write
        suffix = f"-{self.quant_method}-int{self.quant_bits}" if self.quant_bits else "-merged"
        if self.ckpt_dir:
            return self.ckpt_dir + suffix
        from .registry import DEFAULT_MODEL_TYPE

        if self.model_type or not self.model_id_or_path:
            return (self.model_type or DEFAULT_MODEL_TYPE) + suffix
        return os.path.basename(os.path.normpath(self.model_id_or_path)) + suffix

    def _check_output_dir(self) -> None:
        if self.output_dir is None:
            return
        sources = [os.path.realpath(p) for p in (self.ckpt_dir, self.model_id_or_path) if p and os.path.exists(p)]
        if os.path.realpath(self.output_dir) in sources:
            raise ArgumentError(f"--output_dir {self.output_dir} is the model being exported: choose another directory")
        if os.path.exists(self.output_dir) and not self.overwrite:
            raise ArgumentError(f"output directory {self.output_dir} already exists: pass --overwrite true to "
                                "replace it, or choose another --output_dir")


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
        if self.use_hf is None:
            self.use_hf = use_hf_default()
        if self.ckpt_dir or self.lora_modules:
            raise ArgumentError("sft trains --model_type / --model_id_or_path (a merged or full checkpoint works "
                                "there); to continue a run use --resume_from_checkpoint")
        self.fill_dataset_defaults(self.seed)
        self._validate_sft()
        self._fill_sft_defaults()

    def _validate_sft(self) -> None:
        choices = {"sft_type": SFT_TYPES, "dtype": ("AUTO", "bf16", "fp16", "fp32"),
                   "truncation_strategy": ("delete", "truncation_left"), "lr_scheduler_type": LR_SCHEDULERS,
                   "ddp_backend": (None, "nccl", "gloo")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.model_type:
            get_model_meta(self.model_type)
        numbers = [("max_length", self.max_length == -1 or self.max_length >= 8), ("lora_rank", self.lora_rank >= 1),
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
                   ("dataset_test_ratio", 0 <= self.dataset_test_ratio < 1)]
        for name, ok in numbers:
            if not ok:
                raise ArgumentError(f"--{name} is out of range: {getattr(self, name)!r}")
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
        self._check_output_dir()

    def _check_deepspeed(self) -> None:
        """A known config, the package and a GPU: checked before anything loads."""
        import importlib.util

        from .model import default_device
        from .train.deepspeed import BUILTIN, deepspeed_config

        if self.deepspeed not in BUILTIN:
            path = os.path.abspath(os.path.expanduser(self.deepspeed))
            if not (path.endswith(".json") and os.path.isfile(path)):
                raise ArgumentError(f"--deepspeed must be {' or '.join(BUILTIN)} or a DeepSpeed JSON config file, "
                                    f"got {self.deepspeed!r}")
            try:
                deepspeed_config(path)
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
        from .model import default_device
        from .train.fsdp import check_plan, parse_fsdp

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

    def saved_args(self) -> dict[str, Any]:
        """Every argument, as the run's and each checkpoint's args.json record them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class AppUIArguments(InferArguments):
    host: str = "127.0.0.1"
    """Address the web UI listens on. 127.0.0.1 keeps it on this machine; 0.0.0.0 opens it to the network."""
    port: int = 7860
    """TCP port of the web UI."""
    share: bool = False
    """Also publish the UI at a public gradio.live link (needs gradio's tunnel service to be reachable)."""
    api_url: str | None = None
    """Chat with a running `swift deploy` (or any OpenAI-compatible server) at this base URL, e.g.
    http://127.0.0.1:8000/v1, instead of loading a model here."""
    api_key: str | None = None
    """With --api_url: the key that server requires (its --api_key)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.port <= 65535:
            raise ArgumentError(f"--port must be in 1..65535, got {self.port}")
        if self.api_key is not None and not self.api_url:
            raise ArgumentError("--api_key goes with --api_url (the key of the server to chat with)")
        if self.api_url is None:
            return
        if not self.api_url.startswith(("http://", "https://")):
            raise ArgumentError(f"--api_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got "
                                f"{self.api_url!r}")
        local = [name for name in ("model_type", "model_id_or_path", "ckpt_dir", "lora_modules") if getattr(self, name)]
        if local:
            raise ArgumentError(f"--api_url chats with the server's model: drop --{', --'.join(local)} (the server "
                                "chooses the model and its LoRA adapters)")

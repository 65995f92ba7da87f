"""The seed tutorial's Python API (ms-swift 2.x names): `from swiftcli.llm import ...`."""
from ..protocol import InferRequest, InferResponse, RequestConfig
from ..registry import MODEL_MAPPING, ModelType, get_default_template_type, register_model
from ..template import TEMPLATE_MAPPING, Template, TemplateType, get_template, register_template
from ..model import get_model_tokenizer
from ..engine import seed_everything
from .pt_api import inference, inference_stream
from .client import XRequestConfig, get_model_list_client, get_model_list_client_async, inference_client
from .client import inference_client_async
from .vllm_api import VllmGenerationConfig, get_vllm_engine, inference_stream_vllm, inference_vllm
from .vllm_api import __getattr__  # noqa: F401  vLLM's LoRARequest, imported on first use (vLLM takes seconds)
from ..export import ExportArguments, merge_lora, quantize, run_export, to_peft_format

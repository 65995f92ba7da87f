"""Model registry lookups and the auto-detection of unregistered checkpoints."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from swiftcli.errors import ModelNotFoundError
from swiftcli.model import resolve_model
from swiftcli.registry import (MODEL_MAPPING, ModelType, detect_model_meta, find_model_type_by_id,
                               get_default_template_type, get_model_meta)

SEED_TYPES = ["qwen-7b-chat", "qwen-7b", "chatglm3-6b", "yi-6b-chat", "qwen1half-7b-chat-int4", "llama2-7b-chat",
              "llama3-8b-instruct"]


def test_seed_model_types_are_registered():
    for name in SEED_TYPES + ["qwen2_5-7b-instruct", "qwen3-8b", "llama3_2-1b-instruct", "smollm2-135m-instruct"]:
        assert name in MODEL_MAPPING
    assert ModelType.qwen_7b_chat == "qwen-7b-chat"
    assert ModelType.qwen1half_7b_chat_int4 == "qwen1half-7b-chat-int4"
    assert get_default_template_type(ModelType.qwen_7b_chat) == "qwen"
    assert get_default_template_type("qwen-7b") == "default-generation"
    assert get_model_meta("qwen1half-7b-chat-int4").quant_method == "gptq"
    assert not get_model_meta("qwen-7b").is_chat and get_model_meta("llama2-7b-chat").is_chat


def test_unknown_model_type_names_close_matches():
    with pytest.raises(ModelNotFoundError, match="Did you mean: llama3-8b-instruct"):
        get_model_meta("llama3-8b-instrcut")


def test_hub_ids_map_back_to_model_types():
    assert find_model_type_by_id("Qwen/Qwen-7B-Chat") == "qwen-7b-chat"
    assert find_model_type_by_id("qwen/qwen-7b-chat") == "qwen-7b-chat"
    assert find_model_type_by_id("someone/unknown") is None


def test_local_checkpoint_is_detected_without_model_type(model_dir, tmp_path):
    chat = detect_model_meta(model_dir)
    assert (chat.architecture, chat.template, chat.is_chat) == ("LlamaForCausalLM", "auto", True)
    base_dir = tmp_path / "base-model"
    shutil.copytree(model_dir, base_dir)
    os.remove(base_dir / "chat_template.jinja")
    cfg = json.loads((base_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    base = detect_model_meta(str(base_dir))
    assert base.template == "default-generation" and not base.is_chat
    meta, path = resolve_model(None, str(base_dir))
    assert path == str(base_dir) and meta.model_type == "base-model"


def test_missing_local_path_is_an_error_not_a_download():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(None, "./no/such/model")


def test_default_model_resolves_offline(model_dir):
    meta, path = resolve_model(None)
    assert meta.model_type == "smollm2-135m-instruct" and path == model_dir
    assert os.path.isfile(os.path.join(path, "model.safetensors"))

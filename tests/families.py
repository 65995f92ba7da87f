"""Tiny random-init checkpoints of the model families users bring, for the conformance matrix.

Each checkpoint has its family's real architecture class and config (hidden 128, 4 heads of 32, 2 layers), SmolLM2's
tokenizer (the embedded default model) with the family's special tokens added, the family's official chat template
(tests/data/chat_templates/, sources in SOURCES.md) and its generation_config.json eos_token_id list. Building one
takes about a second; `FamilyBuilder` builds each at most once per pytest session (fixture `families` in conftest).

`force_greedy(model, token_id)` edits a loaded model so that greedy decoding emits `token_id` after any input;
`save_forced(model_dir, token_id, out_dir)` writes such a copy of a checkpoint (for vLLM or a subprocess).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
SMALL = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_hidden_layers=2,
             intermediate_size=256, max_position_embeddings=4096)
"""hidden 128 in 4 heads of 32 (vLLM's CPU attention needs a head size of at least 32), GQA, 2 layers."""


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str
    """config.json architectures[0] (the transformers / vLLM class)."""
    model_type: str
    """config.json model_type."""
    template: str | None
    """File name in tests/data/chat_templates/ (None: a base model, no chat template)."""
    special_tokens: tuple[str, ...]
    """Added to SmolLM2's vocabulary as special tokens (those it lacks)."""
    bos: str | None
    eos: str
    """The tokenizer's eos_token (tokenizer_config.json)."""
    pad: str | None
    eos_ids: tuple[str, ...]
    """generation_config.json eos_token_id, as tokens, in the hub's order."""
    end_of_turn: str
    """What closes an assistant turn in the template (and so ends each reply's labels)."""
    system: str = "supported"
    """'supported', or 'error': the official template raises for a system message (Gemma)."""
    tied: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    """Extra config.json fields."""

    def template_text(self) -> str | None:
        return (TEMPLATES / self.template).read_text(encoding="utf-8") if self.template else None


_LLAMA3 = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>")
_MISTRAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]", "[/TOOL_RESULTS]")
_PHI3 = ("<s>", "</s>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>", "<|placeholder3|>",
         "<|placeholder4|>", "<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>")
_QWEN = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>")

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("qwen2_5", "Qwen2ForCausalLM", "qwen2", "qwen2_5.jinja", _QWEN, None, "<|im_end|>", "<|endoftext|>",
           ("<|im_end|>", "<|endoftext|>"), "<|im_end|>", tied=True, config=dict(use_sliding_window=False)),
    Family("qwen3", "Qwen3ForCausalLM", "qwen3", "qwen3.jinja", _QWEN + ("<think>", "</think>"), None, "<|im_end|>",
           "<|endoftext|>", ("<|im_end|>", "<|endoftext|>"), "<|im_end|>", tied=True,
           config=dict(use_sliding_window=False)),
    Family("llama3_1", "LlamaForCausalLM", "llama", "llama3_1.jinja", _LLAMA3, "<|begin_of_text|>", "<|eot_id|>", None,
           ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), "<|eot_id|>",
           config=dict(rope_theta=500000.0)),
    Family("mistral_v0_3", "MistralForCausalLM", "mistral", "mistral_v0_3.jinja", _MISTRAL, "<s>", "</s>", None,
           ("</s>",), "</s>", config=dict(sliding_window=None)),
    Family("gemma2", "Gemma2ForCausalLM", "gemma2", "gemma2.jinja",
           ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>", "<pad>",
           ("<eos>", "<end_of_turn>"), "<end_of_turn>", system="error", tied=True,
           config=dict(sliding_window=4096, query_pre_attn_scalar=32, hidden_activation="gelu_pytorch_tanh")),
    Family("phi3", "Phi3ForCausalLM", "phi3", "phi3.jinja", _PHI3, "<s>", "<|endoftext|>", "<|endoftext|>",
           ("<|endoftext|>", "<|assistant|>", "<|end|>"), "<|end|>",
           config=dict(original_max_position_embeddings=4096, sliding_window=None)),
    # A base model: no chat template (served through completions, template 'default-generation').
    Family("base", "LlamaForCausalLM", "llama", None, (), None, "<|endoftext|>", "<|endoftext|>",
           ("<|endoftext|>",), "<|endoftext|>", tied=True),
]}
CHAT_FAMILIES = [name for name, f in FAMILIES.items() if f.template]
PLAIN_TOKENS = ("<tool_call>", "</tool_call>", "<think>", "</think>")
"""Added tokens that are not special in the real tokenizers (Qwen2.5's and Qwen3's tokenizer_config.json mark them
"special": false), so a decoded reply keeps them and parsers can read them."""


def build_family(name: str, out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Write the tiny checkpoint of family `name` into `out_dir` (created) and return it."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from swiftcli.model import embedded_model_dir

    family = FAMILIES[name]
    out = str(out_dir)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    vocab = tok.get_vocab()
    new = [t for t in family.special_tokens if t not in vocab]
    special = [t for t in new if t not in PLAIN_TOKENS]
    if special:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in special], special_tokens=True)
    plain = [t for t in new if t in PLAIN_TOKENS]
    if plain:  # in the text of a reply, as in the real tokenizers (special: false)
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    tok.bos_token, tok.eos_token, tok.pad_token = family.bos, family.eos, family.pad
    tok.chat_template = family.template_text()
    ids = {t: tok.convert_tokens_to_ids(t) for t in {family.bos, family.eos, family.pad, *family.eos_ids} if t}

    config = AutoConfig.for_model(family.model_type, **SMALL, **family.config, vocab_size=len(tok),
                                  tie_word_embeddings=family.tied, bos_token_id=ids.get(family.bos),
                                  eos_token_id=ids[family.eos], pad_token_id=ids.get(family.pad))
    config.architectures = [family.architecture]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert type(model).__name__ == family.architecture, type(model).__name__
    eos_ids = [ids[t] for t in family.eos_ids]
    model.generation_config = GenerationConfig(bos_token_id=ids.get(family.bos), pad_token_id=ids.get(family.pad),
                                               eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0])
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class FamilyBuilder:
    """Builds each family's checkpoint on first use under `root` and returns its directory afterwards."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._dirs: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name not in self._dirs:
            target = self.root / name
            if not (target / "config.json").is_file():
                shutil.rmtree(target, ignore_errors=True)
                build_family(name, target)
            self._dirs[name] = str(target)
        return self._dirs[name]

    def forced(self, name: str, token: str) -> str:
        """A copy of family `name` whose greedy decoding emits `token` (a token string) first, whatever the input."""
        target = self.root / f"{name}-forced-{token.strip('<>|[]/').replace('|', '')}"
        if not (target / "config.json").is_file():
            model_dir = self(name)
            from transformers import AutoTokenizer

            token_id = AutoTokenizer.from_pretrained(model_dir).convert_tokens_to_ids(token)
            save_forced(model_dir, token_id, target)
        return str(target)


# ---- weight edits --------------------------------------------------------------------------------------------------
def force_greedy(model: Any, token_id: int, dim: int = 0) -> Any:
    """Edit `model` in place so that `token_id` has the highest logit after any input (so greedy emits it).

    Hidden dimension `dim` of every input embedding is set to a constant and no layer writes into it (its rows of
    every o_proj / down_proj are zeroed), so the residual stream carries the constant to the final norm, which keeps
    only that dimension; the output head then reads it with a weight that is largest for `token_id`. Works for tied
    embeddings (the token's own embedding is raised on that dimension) and for Gemma's `1 + weight` norms.
    """
    import torch

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == embed.data_ptr()
    with torch.no_grad():
        embed[:, dim] = 1.0
        if tied:
            embed[token_id, dim] = 2.0
        else:
            head.zero_()
            head[token_id, dim] = 1.0
        for name, module in model.named_modules():
            if name.endswith(("o_proj", "down_proj")) and hasattr(module, "weight"):
                module.weight[dim, :] = 0.0
                if getattr(module, "bias", None) is not None:
                    module.bias[dim] = 0.0
        norm = model.get_decoder().norm
        offset = 1.0 if "Gemma" in type(norm).__name__ else 0.0  # Gemma's RMSNorm scales by (1 + weight)
        norm.weight.fill_(-offset)
        norm.weight[dim] = 1.0 - offset
    return model


def save_forced(model_dir: str, token_id: int, out_dir: str | os.PathLike) -> str:
    """A copy of the checkpoint at `model_dir` edited by `force_greedy` (tokenizer and configs copied as they are)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = str(out_dir)
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"), dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    force_greedy(model, token_id).to(torch.bfloat16).save_pretrained(out)
    return out


def save_chain(model_dir: str, chain: dict[str, str], out_dir: str | os.PathLike) -> str:
    """A copy of the checkpoint whose greedy decoding follows `chain` (token -> next token, as token strings): the
    next token depends on the current one only. Attention and MLP outputs are zeroed, so the last hidden state is the
    current token's embedding; chain tokens get one-hot embeddings and the (untied) output head maps each one-hot
    dimension to its successor."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(out_dir)
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"), dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hidden = model.config.hidden_size
    head = torch.nn.Linear(hidden, model.config.vocab_size, bias=False)
    with torch.no_grad():
        head.weight.zero_()
        embed = model.get_input_embeddings().weight
        embed.zero_()
        for dim, (token, successor) in enumerate(chain.items(), start=1):
            embed[tok.convert_tokens_to_ids(token), dim] = 1.0
            head.weight[tok.convert_tokens_to_ids(successor), dim] = 10.0
        for name, module in model.named_modules():
            if name.endswith(("o_proj", "down_proj")):
                module.weight.zero_()
        model.get_decoder().norm.weight.fill_(1.0)
    model.config.tie_word_embeddings = False
    model.lm_head = head
    model.to(torch.bfloat16).save_pretrained(out)
    return out

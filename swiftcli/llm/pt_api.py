"""ms-swift 2.x's transformers-side API (`inference`, `inference_stream`) on top of the pt engine."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..engine.base import EngineInfo
from ..engine.pt_engine import PtEngine
from ..protocol import History, InferRequest, RequestConfig
from ..template import Template


def config_from_generation_config(generation_config: Any, stop_words: list[str] | None = None) -> RequestConfig:
    """A transformers GenerationConfig (what the seed's users set) as our RequestConfig."""
    gen = generation_config.to_dict() if hasattr(generation_config, "to_dict") else dict(vars(generation_config))
    return RequestConfig.from_generation_config(gen, max_tokens=gen.get("max_new_tokens") or 2048,
                                                stop=list(stop_words or []))


def _engine(model: Any, template: Template) -> PtEngine:
    """One engine per (model, template), kept on the model so repeated calls don't rebuild it."""
    engines = model.__dict__.setdefault("_swift_engines", {})
    key = id(template)
    if key not in engines:
        config = getattr(model, "config", None)
        context = getattr(config, "max_position_embeddings", None) or 2048
        info = EngineInfo(getattr(model, "model_type", "model"), getattr(model, "model_dir", ""), "pt",
                          str(next(model.parameters()).dtype).removeprefix("torch."), context)
        engines[key] = PtEngine(model, template, info, RequestConfig(max_tokens=2048, temperature=0.0))
    return engines[key]


def inference_stream(model: Any, template: Template, query: str, history: History | None = None,
                     system: str | None = None, *, generation_config: Any = None,
                     stop_words: list[str] | None = None, **kwargs: Any) -> Iterator[tuple[str, History]]:
    """Yields (response so far, history including this turn) as tokens arrive."""
    engine = _engine(model, template)
    config = config_from_generation_config(generation_config or model.generation_config, stop_words)
    request = InferRequest.from_query(query, history, system)
    history = [list(turn) for turn in history or []]
    response = ""
    for delta in engine.infer_stream(request, config):
        response += delta.text
        yield response, history + [[query, response]]


def inference(model: Any, template: Template, query: str, history: History | None = None,
              system: str | None = None, *, generation_config: Any = None, stop_words: list[str] | None = None,
              stream: bool = False, verbose: bool = False, **kwargs: Any) -> tuple[str, History]:
    """(response, history including this turn). `verbose` prints the prompt and the streamed reply."""
    if verbose:
        print(f"[PROMPT]{template.render(InferRequest.from_query(query, history, system).messages)[0]}[OUTPUT]",
              end="", flush=True)
    response, new_history, printed = "", [], 0
    for response, new_history in inference_stream(model, template, query, history, system,
                                                   generation_config=generation_config, stop_words=stop_words):
        if verbose:
            print(response[printed:], end="", flush=True)
            printed = len(response)
    if verbose:
        print()
    return response, new_history

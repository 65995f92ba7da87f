"""`swift deploy` end to end: real `swift deploy --infer_backend pt` subprocesses on 127.0.0.1, the official
`openai` SDK as the client, raw HTTP (http.client) where a client must misbehave.

Two servers start once per module: the main one (default model, a LoRA adapter, small default max_new_tokens so
the seed's examples stay fast) and one with --api_key, which the last test stops with SIGTERM. A third, in-process
server wraps a scripted engine for what a real model cannot do on demand: fail.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SwiftServer, make_lora, refuses_connections, serve_in_thread, start_swift
from openai import (
    APIError,
    AsyncOpenAI,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    OpenAI,
)

from swiftcli.engine.base import EngineInfo, InferEngine
from swiftcli.model import load_tokenizer
from swiftcli.protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, Usage
from swiftcli.template import Encoded, Template, get_template

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
LORA = "my_tuner"
KEY = "sk-test-key"
CONTEXT = 8192
SERVER_MAX_NEW_TOKENS = 24
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


# ---- servers -------------------------------------------------------------------------------------------------
Server = SwiftServer


def start_server(log_dir: Path, name: str, *flags: str) -> Server:
    return start_swift(log_dir, name, "deploy", "--infer_backend", "pt", *flags)


def make_checkpoint(model_dir: str, path: Path, seed: int) -> Path:
    """A LoRA checkpoint as sft leaves it: the peft adapter plus the args.json that names the base model."""
    make_lora(model_dir, str(path), seed=seed)
    (path / "args.json").write_text(json.dumps({"model_type": BASE}))
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory, model_dir) -> Iterator[tuple[Server, Server]]:
    tmp = tmp_path_factory.mktemp("deploy")
    keyed = start_server(tmp, "keyed", "--api_key", KEY, "--served_model_name", "smol")  # loads while we build
    default_lora, tuner = make_checkpoint(model_dir, tmp / "ckpt", 1), make_lora(model_dir, str(tmp / "tuner"), 2)
    main = start_server(tmp, "main", "--ckpt_dir", str(default_lora), "--lora_modules", f"{LORA}={tuner}",
                        "--max_new_tokens", str(SERVER_MAX_NEW_TOKENS), "--log_interval", "1")
    try:
        main.wait_ready()
        keyed.wait_ready()
        yield main, keyed
    finally:
        main.stop()
        keyed.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def keyed_server(servers) -> Server:
    return servers[1]


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return server.client()


@pytest.fixture(scope="module")
def template(model_dir):
    """The server's own template, to count prompt tokens the way the engine does."""
    return get_template("smollm2", load_tokenizer(model_dir))


def chat(client: OpenAI, messages=HELLO, model: str = BASE, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, **{"max_tokens": 8, **kwargs})


# ---- models, chat, completions -------------------------------------------------------------------------------
def test_models_list_has_base_and_every_lora(client):
    cards = client.models.list().data
    assert [c.id for c in cards] == [BASE, "default-lora", LORA]
    for card in cards:
        assert card.owned_by == "swift" and card.created > 0 and card.model_extra["is_chat"] is True
    assert {c.model_extra["parent"] for c in cards[1:]} == {BASE}


def test_chat_stream_matches_non_stream_with_usage(client, template):
    full = chat(client, temperature=0)
    text = full.choices[0].message.content
    assert text and full.choices[0].message.role == "assistant"
    assert full.usage.prompt_tokens == len(template.encode(HELLO).input_ids)
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    chunks = list(chat(client, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].delta.content for c in chunks[:-1]) == text
    assert chunks[-2].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_chat_stream_without_usage_option_sends_no_usage_chunk(client):
    chunks = list(chat(client, temperature=0, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert all(isinstance(c.choices[0].delta.content, str) for c in chunks)  # the seed prints it unchecked


def test_text_parts_system_and_multi_turn_messages(client):
    plain = chat(client, temperature=0).choices[0].message.content
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello! "}, {"type": "text", "text": "Who are you?"}]}]
    assert chat(client, parts, temperature=0).choices[0].message.content == plain
    turns = [{"role": "system", "content": "Answer in one word."}, *HELLO, {"role": "assistant", "content": plain},
             {"role": "user", "content": "And your name?"}]
    assert chat(client, turns, temperature=0).choices[0].message.content


def test_logprobs_in_both_shapes(client):
    out = chat(client, temperature=0, max_tokens=3, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    assert len(content) == 3 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert content[0].top_logprobs[0].logprob == content[0].logprob  # greedy: the sampled token is the top one
    chunks = list(chat(client, temperature=0, max_tokens=3, logprobs=True, top_logprobs=2, stream=True,
                       extra_body={"ignore_eos": True}))
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    legacy = client.completions.create(model=BASE, prompt="1, 2, 3,", max_tokens=3, temperature=0, logprobs=1,
                                       extra_body={"ignore_eos": True}).choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 3
    assert legacy.text_offset[0] == 0 and "".join(legacy.tokens).startswith(" 4")


def test_completions_use_the_raw_prompt_and_echo(client, template):
    prompt = "The capital of France is"
    full = client.completions.create(model=BASE, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert full.usage.prompt_tokens == len(template.encode_prompt(prompt).input_ids)  # no chat template
    assert full.choices[0].text.startswith(prompt) and len(full.choices[0].text) > len(prompt)
    stream = client.completions.create(model=BASE, prompt=prompt, max_tokens=6, temperature=0, echo=True,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].text == prompt
    assert "".join(c.choices[0].text for c in chunks[:-1]) == full.choices[0].text
    assert chunks[-1].usage == full.usage


def test_completions_prompt_list_gives_a_choice_per_prompt(client):
    out = client.completions.create(model=BASE, prompt=["1, 2, 3,", "a, b, c,"], max_tokens=3, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    single = client.completions.create(model=BASE, prompt="a, b, c,", max_tokens=3, temperature=0)
    assert out.choices[1].text == single.choices[0].text


def test_max_completion_tokens_and_ignore_eos_are_honoured(client):
    out = client.chat.completions.create(model=BASE, messages=HELLO, max_completion_tokens=3,
                                         extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_same_seed_and_temperature_give_the_same_text(client):
    messages = [{"role": "user", "content": "Invent a name for a cat."}]
    texts = [chat(client, messages, temperature=1.0, seed=s, max_tokens=12).choices[0].message.content
             for s in (123, 123, 7, 8, 9)]
    assert texts[0] == texts[1]
    assert any(t != texts[0] for t in texts[2:])


def test_n_2_gives_two_choices(client):
    out = chat(client, temperature=1.0, seed=3, n=2, max_tokens=6)
    assert [c.index for c in out.choices] == [0, 1]
    chunks = list(chat(client, temperature=1.0, seed=3, n=2, max_tokens=6, stream=True))
    texts = {i: "".join(c.choices[0].delta.content for c in chunks if c.choices[0].index == i) for i in (0, 1)}
    assert texts == {c.index: c.message.content for c in out.choices}
    assert sum(1 for c in chunks if c.choices[0].finish_reason) == 2


def test_stop_ends_the_reply_before_the_stop_string(client):
    text = chat(client, temperature=0, max_tokens=12).choices[0].message.content
    word = text.split()[2]
    out = chat(client, temperature=0, max_tokens=12, stop=[word])
    assert out.choices[0].message.content == text[:text.index(word)]
    assert out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content for c in chat(client, temperature=0, max_tokens=12, stop=word,
                                                                 stream=True))
    assert streamed == text[:text.index(word)]


def test_lora_names_route_to_their_adapters(client):
    answers = {m: chat(client, model=m, temperature=0).choices[0].message.content for m in (BASE, "default-lora", LORA)}
    assert len(set(answers.values())) == 3, answers
    assert chat(client, model=BASE, temperature=0).choices[0].message.content == answers[BASE]
    with pytest.raises(NotFoundError) as e:
        chat(client, model="no-such-tuner")
    assert e.value.param == "model"


# ---- the seed's section 4 client examples: only the import line, the model and the port changed -------------
def test_seed_swift_client_example(server, capsys):
    from swiftcli.llm import XRequestConfig, get_model_list_client, inference_client

    model_list = get_model_list_client(port=server.port)
    model_type = model_list.data[0].id
    print(f'model_type: {model_type}')

    query = '浙江的省会在哪里?'
    request_config = XRequestConfig(seed=42)
    resp = inference_client(model_type, query, request_config=request_config, port=server.port)
    response = resp.choices[0].message.content
    print(f'query: {query}')
    print(f'response: {response}')

    history = [(query, response)]
    query = '这有什么好吃的?'
    request_config = XRequestConfig(stream=True, seed=42)
    stream_resp = inference_client(model_type, query, history, request_config=request_config, port=server.port)
    print(f'query: {query}')
    print('response: ', end='')
    for chunk in stream_resp:
        print(chunk.choices[0].delta.content, end='', flush=True)
    print()

    out = capsys.readouterr().out
    assert model_type == BASE and response
    streamed = out.split("response: ")[-1]
    assert streamed.strip() and "None" not in streamed


def test_seed_openai_examples(server, capsys):
    from openai import OpenAI
    client = OpenAI(
        api_key='EMPTY',
        base_url=f'http://localhost:{server.port}/v1',
    )
    model_type = client.models.list().data[0].id
    print(f'model_type: {model_type}')

    query = '浙江的省会在哪里?'
    messages = [{
        'role': 'user',
        'content': query
    }]
    resp = client.chat.completions.create(
        model=model_type,
        messages=messages,
        seed=42)
    response = resp.choices[0].message.content
    print(f'query: {query}')
    print(f'response: {response}')

    # 流式
    messages.append({'role': 'assistant', 'content': response})
    query = '这有什么好吃的?'
    messages.append({'role': 'user', 'content': query})
    stream_resp = client.chat.completions.create(
        model=model_type,
        messages=messages,
        stream=True,
        seed=42)

    print(f'query: {query}')
    print('response: ', end='')
    for chunk in stream_resp:
        print(chunk.choices[0].delta.content, end='', flush=True)
    print()

    query = '浙江 -> 杭州\n安徽 -> 合肥\n四川 ->'
    kwargs = {'model': model_type, 'prompt': query, 'seed': 42, 'temperature': 0.1, 'max_tokens': 32}
    resp = client.completions.create(**kwargs)
    completion = resp.choices[0].text
    stream_resp = client.completions.create(stream=True, **kwargs)
    streamed_completion = "".join(chunk.choices[0].text for chunk in stream_resp)

    out = capsys.readouterr().out
    assert response and "None" not in out.split("response: ")[-1]
    assert completion and streamed_completion == completion


def test_async_client_functions(server):
    from swiftcli.llm import XRequestConfig, get_model_list_client_async, inference_client_async

    async def run() -> tuple[str, str, str]:
        models = await get_model_list_client_async(port=server.port)
        whole = await inference_client_async(BASE, "Hi!", request_config=XRequestConfig(max_tokens=6, temperature=0),
                                             port=server.port)
        stream = await inference_client_async(BASE, "Hi!", port=server.port,
                                              request_config=XRequestConfig(max_tokens=6, temperature=0, stream=True))
        streamed = "".join([c.choices[0].delta.content async for c in stream])
        return models.data[0].id, whole.choices[0].message.content, streamed

    model_id, whole, streamed = asyncio.run(run())
    assert model_id == BASE and whole and streamed == whole


def test_client_sends_only_the_fields_that_were_set():
    from swiftcli.llm import XRequestConfig

    assert XRequestConfig(seed=42, stream=True).body(is_chat=True) == {"seed": 42}
    assert XRequestConfig(logprobs=True, top_logprobs=2).body(is_chat=False) == {"logprobs": 2}


def test_client_raises_with_the_server_message(server):
    from swiftcli.llm import XRequestConfig, inference_client

    with pytest.raises(BadRequestError, match="temperature"):
        inference_client(BASE, "Hi", request_config=XRequestConfig(temperature=5.0), port=server.port)


# ---- bad input: every case is a 4xx in OpenAI's error shape, and the server stays up --------------------------
def post(port: int, path: str, body: bytes | str | dict | list, content_type: str = "application/json",
         headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def assert_error_shape(body: dict) -> dict:
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


CHAT_PATH, COMPLETIONS_PATH = "/v1/chat/completions", "/v1/completions"
OK_CHAT = {"model": BASE, "messages": HELLO, "max_tokens": 4}
OK_COMPLETION = {"model": BASE, "prompt": "Hi", "max_tokens": 4}
LONG_TEXT = "hello " * 9000

# (case id, path, body, expected status, expected param or None, a word the message must contain or None)
BAD_INPUTS = [
    ("malformed-json", CHAT_PATH, b'{"model": "x", ', 400, None, "JSON"),
    ("non-utf8-body", CHAT_PATH, b'{"model": "\xff\xfe"}', 400, None, None),
    ("body-is-a-list", CHAT_PATH, [], 400, None, "JSON object"),
    ("body-is-a-string", CHAT_PATH, '"hello"', 400, None, "JSON object"),
    ("empty-body", CHAT_PATH, b"", 400, None, None),
    ("missing-model", CHAT_PATH, {"messages": HELLO}, 400, "model", "model"),
    ("missing-messages", CHAT_PATH, {"model": BASE}, 400, "messages", "messages"),
    ("messages-not-a-list", CHAT_PATH, {**OK_CHAT, "messages": "hi"}, 400, "messages", "messages"),
    ("empty-messages", CHAT_PATH, {**OK_CHAT, "messages": []}, 400, "messages", "messages"),
    ("bad-role", CHAT_PATH, {**OK_CHAT, "messages": [{"role": "bot", "content": "hi"}]}, 400, "messages", "role"),
    ("message-without-role", CHAT_PATH, {**OK_CHAT, "messages": [{"content": "hi"}]}, 400, "messages", "role"),
    ("content-wrong-type", CHAT_PATH, {**OK_CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages",
     "content"),
    ("image-content-part", CHAT_PATH, {**OK_CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "messages", "content"),
    ("only-system", CHAT_PATH, {**OK_CHAT, "messages": [{"role": "system", "content": "be nice"}]}, 400, "messages",
     "user"),
    ("user-user", CHAT_PATH, {**OK_CHAT, "messages": HELLO + HELLO}, 400, "messages", "alternate"),
    ("max-tokens-zero", CHAT_PATH, {**OK_CHAT, "max_tokens": 0}, 400, None, "max_tokens"),
    ("max-tokens-negative", CHAT_PATH, {**OK_CHAT, "max_tokens": -5}, 400, None, "max_tokens"),
    ("max-completion-tokens-negative", CHAT_PATH, {**OK_CHAT, "max_completion_tokens": -1}, 400, None, "max_tokens"),
    ("max-tokens-string", CHAT_PATH, {**OK_CHAT, "max_tokens": "many"}, 400, "max_tokens", "max_tokens"),
    ("max-tokens-fraction", CHAT_PATH, {**OK_CHAT, "max_tokens": 1.5}, 400, "max_tokens", "max_tokens"),
    ("temperature-too-high", CHAT_PATH, {**OK_CHAT, "temperature": 3}, 400, None, "temperature"),
    ("temperature-negative", CHAT_PATH, {**OK_CHAT, "temperature": -1}, 400, None, "temperature"),
    ("temperature-string", CHAT_PATH, {**OK_CHAT, "temperature": "hot"}, 400, "temperature", "temperature"),
    ("top-p-zero", CHAT_PATH, {**OK_CHAT, "top_p": 0}, 400, None, "top_p"),
    ("top-k-below-minus-one", CHAT_PATH, {**OK_CHAT, "top_k": -2}, 400, None, "top_k"),
    ("seed-too-large", CHAT_PATH, {**OK_CHAT, "seed": 2**70}, 400, None, "seed"),
    ("presence-penalty-too-high", CHAT_PATH, {**OK_CHAT, "presence_penalty": 5}, 400, None, "presence_penalty"),
    ("n-zero", CHAT_PATH, {**OK_CHAT, "n": 0}, 400, None, "n "),
    ("n-too-large", CHAT_PATH, {**OK_CHAT, "n": 100}, 400, None, "n "),
    ("stop-empty-string", CHAT_PATH, {**OK_CHAT, "stop": ""}, 400, None, "stop"),
    ("stop-not-strings", CHAT_PATH, {**OK_CHAT, "stop": [1, 2]}, 400, "stop", "stop"),
    ("top-logprobs-too-many", CHAT_PATH, {**OK_CHAT, "logprobs": True, "top_logprobs": 50}, 400, None,
     "top_logprobs"),
    ("seed-string", CHAT_PATH, {**OK_CHAT, "seed": "abc"}, 400, "seed", "seed"),
    ("stream-options-wrong-type", CHAT_PATH, {**OK_CHAT, "stream_options": "usage"}, 400, "stream_options", None),
    ("unknown-model", CHAT_PATH, {**OK_CHAT, "model": "gpt-4"}, 404, "model", "gpt-4"),
    ("prompt-over-context", CHAT_PATH, {**OK_CHAT, "messages": [{"role": "user", "content": LONG_TEXT}]}, 400,
     "messages", str(CONTEXT)),
    ("prompt-over-context-stream", CHAT_PATH, {**OK_CHAT, "stream": True, "messages": [
        {"role": "user", "content": LONG_TEXT}]}, 400, "messages", str(CONTEXT)),
    ("completion-missing-prompt", COMPLETIONS_PATH, {"model": BASE}, 400, "prompt", "prompt"),
    ("completion-empty-prompt", COMPLETIONS_PATH, {**OK_COMPLETION, "prompt": ""}, 400, "prompt", "prompt"),
    ("completion-empty-prompt-list", COMPLETIONS_PATH, {**OK_COMPLETION, "prompt": []}, 400, "prompt", "prompt"),
    ("completion-negative-token-id", COMPLETIONS_PATH, {**OK_COMPLETION, "prompt": [1, -2, 3]}, 400, "prompt", None),
    ("completion-token-id-outside-vocab", COMPLETIONS_PATH, {**OK_COMPLETION, "prompt": [1, 10**9]}, 400, "prompt",
     "vocabulary"),
    ("completion-logprobs-string", COMPLETIONS_PATH, {**OK_COMPLETION, "logprobs": "yes"}, 400, "logprobs", None),
    ("completion-over-context", COMPLETIONS_PATH, {**OK_COMPLETION, "prompt": LONG_TEXT}, 400, "prompt",
     str(CONTEXT)),
    ("completion-unknown-model", COMPLETIONS_PATH, {**OK_COMPLETION, "model": "nope"}, 404, "model", "nope"),
    ("unknown-route", "/v1/embeddings", OK_CHAT, 404, None, None),
]


@pytest.mark.parametrize("path,body,status,param,word", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_an_openai_error(server, path, body, status, param, word):
    got, response = post(server.port, path, body)
    assert got == status, response
    error = assert_error_shape(response)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if word is not None:
        assert word in error["message"], error


def test_form_encoded_body_is_told_to_send_json(server):
    status, body = post(server.port, CHAT_PATH, json.dumps(OK_CHAT), content_type="application/x-www-form-urlencoded")
    assert status == 400 and "application/json" in assert_error_shape(body)["message"]


def test_wrong_method_is_405_in_openai_shape(server):
    status, body = post(server.port, CHAT_PATH, b"", method="GET")
    assert status == 405
    assert_error_shape(body)


def test_context_overflow_names_both_numbers(server, template):
    messages = [{"role": "user", "content": LONG_TEXT}]
    status, body = post(server.port, CHAT_PATH, {**OK_CHAT, "messages": messages})
    error = assert_error_shape(body)
    assert status == 400 and error["code"] == "context_length_exceeded"
    assert str(CONTEXT) in error["message"] and str(len(template.encode(messages).input_ids)) in error["message"]


def test_server_is_healthy_and_answers_after_bad_input(server, client):
    for _, path, body, *_ in BAD_INPUTS:
        post(server.port, path, body)
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as r:
        assert r.status == 200
    assert chat(client, temperature=0).choices[0].message.content


# ---- load, disconnects, logs, metrics ----------------------------------------------------------------------------
def metric(server: Server, name: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_32_concurrent_streams_all_complete_with_correct_usage(server, template):
    prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(32)]

    async def one(client: AsyncOpenAI, messages) -> tuple[str, object]:
        stream = await client.chat.completions.create(model=BASE, messages=messages, max_tokens=4, temperature=0,
                                                      stream=True, stream_options={"include_usage": True},
                                                      extra_body={"ignore_eos": True})
        chunks = [c async for c in stream]
        return "".join(c.choices[0].delta.content for c in chunks if c.choices), chunks[-1].usage

    async def run():
        async with AsyncOpenAI(base_url=f"{server.url}/v1", api_key="EMPTY", max_retries=0, timeout=600) as client:
            return await asyncio.gather(*(one(client, m) for m in prompts))

    results = asyncio.run(run())
    for messages, (text, usage) in zip(prompts, results):
        assert text
        assert usage.completion_tokens == 4
        assert usage.prompt_tokens == len(template.encode(messages).input_ids)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_client_disconnect_mid_stream_aborts_the_generation(server):
    aborted_before = metric(server, 'swift_requests_total{endpoint="/v1/chat/completions",status="aborted"}')
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    body = {**OK_CHAT, "max_tokens": 4000, "stream": True, "ignore_eos": True}
    conn.request("POST", CHAT_PATH, body=json.dumps(body), headers={"Content-Type": "application/json"})
    sock, response = conn.sock, conn.getresponse()
    assert response.status == 200
    contents = 0
    while contents < 3:  # the generation is under way
        line = response.readline()
        contents += b'"content":"' in line and b'"role"' not in line
    assert metric(server, "swift_num_requests_running") == 1
    sock.shutdown(socket.SHUT_RDWR)
    conn.close()

    deadline = time.time() + 2
    while metric(server, "swift_num_requests_running") != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert metric(server, "swift_num_requests_running") == 0
    assert metric(server, 'swift_requests_total{endpoint="/v1/chat/completions",status="aborted"}') == aborted_before + 1
    time.sleep(0.5)  # the step that was running when the client left may finish
    before = cpu_seconds(server.proc.pid)
    time.sleep(1.0)
    assert cpu_seconds(server.proc.pid) - before < 0.3, "the server keeps computing for a client that is gone"


def test_one_log_line_per_request_and_throughput_lines(server, client):
    out = chat(client, temperature=0)
    time.sleep(1.5)
    log = server.log_text()
    lines = [line for line in log.splitlines() if out.id in line]
    assert len(lines) == 1
    assert f"prompt_tokens={out.usage.prompt_tokens}" in lines[0] and "status=200" in lines[0]
    assert "throughput:" in log and "tok/s" in log


def test_startup_curl_line_works_when_pasted(server):
    line = next(line for line in server.log_text().splitlines() if "Try: curl" in line)
    command = line.split("Try: ", 1)[1].replace('"max_tokens": 64', '"max_tokens": 4')
    out = subprocess.run([*shlex.split(command), "-s"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout)["choices"][0]["message"]["content"]


def test_metrics_and_version(server):
    assert metric(server, 'swift_requests_total{endpoint="/v1/chat/completions",status="200"}') > 0
    assert metric(server, "swift_generation_tokens_total") > 0
    assert metric(server, "swift_time_to_first_token_seconds_count") > 0
    with urllib.request.urlopen(f"{server.url}/version", timeout=10) as r:
        assert json.loads(r.read())["backend"] == "pt"


# ---- errors no real model makes on demand: a scripted engine behind the same app ------------------------------
class ScriptedEngine(InferEngine):
    """Replies 'ok', or as the prompt says: FAIL fails before any text (non-stream) or after the first delta
    (stream); SLOW takes half a second."""

    info = EngineInfo("scripted", "/nowhere", "scripted", "fp32", 64)
    default_config = RequestConfig(max_tokens=8)

    def __init__(self, is_generation: bool = False):
        self.template = Template("scripted", is_generation=is_generation)
        self.running = self.most_running = 0
        self.lock = threading.Lock()

    def encode(self, request: InferRequest) -> Encoded:
        return Encoded([1, 2, 3])

    def infer(self, requests, config=None, use_tqdm=False):
        if "FAIL" in str(requests[0].messages or requests[0].prompt):
            raise RuntimeError("scripted engine failure")
        if "SLOW" in str(requests[0].messages or requests[0].prompt):
            with self.lock:
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            time.sleep(0.5)
            with self.lock:
                self.running -= 1
        return [InferResponse([Choice(0, "ok", "stop")], Usage(3, 1)) for _ in requests]

    def infer_stream(self, request, config=None):
        yield StreamDelta(0, "partial ")
        if "FAIL" in str(request.messages or request.prompt):
            raise RuntimeError("scripted failure mid-stream")
        yield StreamDelta(0, "ok", "stop")
        yield StreamDelta(0, "", usage=Usage(3, 2))


@contextlib.contextmanager
def scripted_client(engine: InferEngine, **deploy_args) -> Iterator[OpenAI]:
    """An `openai` client of the real app served in this process around an engine the test controls."""
    with serve_in_thread(engine, **deploy_args) as url:
        yield OpenAI(base_url=url, api_key="EMPTY", max_retries=0)


@pytest.fixture(scope="module")
def scripted() -> Iterator[OpenAI]:
    with scripted_client(ScriptedEngine()) as client:
        yield client


@pytest.fixture(scope="module")
def scripted_generation() -> Iterator[OpenAI]:
    with scripted_client(ScriptedEngine(is_generation=True)) as client:
        yield client


def test_engine_failure_is_a_500_and_the_server_stays_up(scripted):
    with pytest.raises(InternalServerError) as e:
        scripted.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "FAIL"}])
    assert e.value.body["type"] == "server_error" and "scripted engine failure" in e.value.body["message"]
    assert scripted.chat.completions.create(model="scripted", messages=HELLO).choices[0].message.content == "ok"


def test_error_after_the_stream_started_is_a_last_error_chunk(scripted):
    stream = scripted.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "FAIL"}],
                                              stream=True)
    received = []
    with pytest.raises(APIError, match="scripted failure mid-stream"):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "partial "]
    ok = scripted.chat.completions.create(model="scripted", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content for c in ok) == "partial ok"


def test_generation_model_refuses_chat_and_serves_completions(scripted_generation):
    assert scripted_generation.models.list().data[0].model_extra["is_chat"] is False
    with pytest.raises(BadRequestError, match="/v1/completions"):
        scripted_generation.chat.completions.create(model="scripted", messages=HELLO)
    assert scripted_generation.completions.create(model="scripted", prompt="Hi").choices[0].text == "ok"


def test_max_concurrency_queues_the_rest():
    async def three_slow(client: AsyncOpenAI) -> None:
        await asyncio.gather(*(client.completions.create(model="scripted", prompt="SLOW") for _ in range(3)))

    most_running = {}
    for limit in (None, 1):
        engine = ScriptedEngine()
        with scripted_client(engine, max_concurrency=limit) as sync_client:
            client = AsyncOpenAI(base_url=str(sync_client.base_url), api_key="EMPTY", max_retries=0)
            asyncio.run(three_slow(client))
        most_running[limit] = engine.most_running
    assert most_running == {None: 3, 1: 1}, most_running  # all three at once, or one at a time


@pytest.mark.parametrize("flags,word", [
    ({"port": 0}, "--port"), ({"ssl_keyfile": __file__}, "--ssl_certfile"), ({"max_concurrency": 0}, "concurrency"),
    ({"log_interval": -1}, "log_interval"), ({"api_key": " "}, "api_key"),
    ({"served_model_name": "x", "lora_modules": ["x={adapter}"]}, "unique"),
])
def test_deploy_arguments_are_validated(flags, word, tmp_path):
    from swiftcli.arguments import DeployArguments
    from swiftcli.errors import ArgumentError

    (tmp_path / "adapter_config.json").write_text("{}")
    flags = {k: [v.format(adapter=tmp_path) for v in value] if isinstance(value, list) else value
             for k, value in flags.items()}
    with pytest.raises(ArgumentError, match=word):
        DeployArguments(infer_backend="pt", **flags)


def test_only_loopback_hosts_count_as_private():
    from swiftcli.arguments import is_loopback

    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "192.168.1.5", "example.com")] == [
        True, True, True, False, False, False]


# ---- API key and shutdown (the keyed server; the SIGTERM test stops it, so it comes last) ----------------------
def test_api_key_is_required_on_v1_routes(keyed_server):
    with pytest.raises(AuthenticationError) as e:
        keyed_server.client("wrong-key").models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    status, body = post(keyed_server.port, CHAT_PATH, {**OK_CHAT, "model": "smol"})
    assert status == 401 and assert_error_shape(body)["code"] == "invalid_api_key"
    status, body = post(keyed_server.port, CHAT_PATH, {**OK_CHAT, "model": "smol"},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["model"] == "smol"
    assert [m.id for m in keyed_server.client(KEY).models.list().data] == ["smol"]
    with urllib.request.urlopen(f"{keyed_server.url}/health", timeout=10) as r:
        assert r.status == 200


def test_sigterm_drains_the_in_flight_stream_then_exits_0(keyed_server):
    client = keyed_server.client(KEY)
    stream = iter(client.chat.completions.create(model="smol", messages=HELLO, max_tokens=48, stream=True,
                                                 extra_body={"ignore_eos": True}))
    assert next(stream).choices[0].delta.role == "assistant"
    keyed_server.proc.send_signal(signal.SIGTERM)
    assert refuses_connections(keyed_server.port, within=5), "still accepting connections after SIGTERM"
    rest = list(stream)
    assert rest[-1].choices[0].finish_reason == "length"
    assert keyed_server.proc.wait(60) == 0
    assert "In-flight requests drained; exiting after SIGTERM." in keyed_server.log_text()

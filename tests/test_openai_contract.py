"""The OpenAI contract of `swift deploy`: nothing a client sends is silently ignored. Every field is implemented
(checked by what it does to the reply) or refused with a 400 that names it. Each test runs on both backends,
through the official `openai` SDK: pt (the real app in-process around the session's pt engine) and vLLM (one
`swift deploy --infer_backend vllm` subprocess for the whole module).
"""
from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import serve_in_thread, start_swift
from openai import BadRequestError, NotFoundError, OpenAI

from swiftcli.model import load_tokenizer

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
PROMPT = "The capital of France is"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", params=["pt", pytest.param("vllm", marks=pytest.mark.vllm)])
def client(request, tmp_path_factory) -> Iterator[OpenAI]:
    """One server per backend for the whole module (pytest runs every pt test, then every vLLM one)."""
    if request.param == "pt":
        with serve_in_thread(request.getfixturevalue("pt_engine")) as url:
            yield OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=300)
        return
    server = start_swift(tmp_path_factory.mktemp("contract-vllm"), "vllm", "deploy", "--infer_backend", "vllm",
                         "--enforce_eager", "true", "--max_model_len", "2048", one_thread=False)
    try:
        server.wait_ready(600)
        yield server.client()
    finally:
        server.stop(120)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(model_dir)


def complete(client: OpenAI, prompt=PROMPT, **kwargs):
    return client.completions.create(model=BASE, prompt=prompt, **{"max_tokens": 6, "temperature": 0, **kwargs})


def chat(client: OpenAI, **kwargs):
    return client.chat.completions.create(model=BASE, messages=HELLO, **{"max_tokens": 6, "temperature": 0, **kwargs})


def refused(call, param: str) -> str:
    """The call is a 400 whose `param` names the field; returns the message."""
    with pytest.raises(BadRequestError) as e:
        call()
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body
    return e.value.body["message"]


def root_url(client: OpenAI) -> str:
    return str(client.base_url).rstrip("/").removesuffix("/v1")


# ---- prompts as token ids, echo with logprobs, prompt_logprobs ------------------------------------------------
def test_completions_accept_token_id_prompts(client, tokenizer):
    ids = tokenizer(PROMPT)["input_ids"]
    text = complete(client).choices[0].text
    assert complete(client, ids).choices[0].text == text
    both = complete(client, [ids, tokenizer("Hello, my name is")["input_ids"]])
    assert [c.index for c in both.choices] == [0, 1] and both.choices[0].text == text
    echoed = complete(client, ids, echo=True)
    assert echoed.choices[0].text == tokenizer.decode(ids) + text
    refused(lambda: complete(client, [len(tokenizer) + 5]), "prompt")  # out of the vocabulary
    with pytest.raises(BadRequestError):
        complete(client, [-1])


def test_echo_with_logprobs_scores_the_prompt_tokens(client, tokenizer):
    """What lm-eval's local-completions reads: every prompt token's logprob (the first null), offsets from 0."""
    first = complete(client, max_tokens=1, logprobs=1)
    next_id = tokenizer(PROMPT + first.choices[0].text)["input_ids"][-1]
    ids = tokenizer(PROMPT)["input_ids"] + [next_id]
    out = complete(client, ids, max_tokens=1, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 == out.usage.prompt_tokens + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and "".join(lp.tokens[:len(ids)]) == tokenizer.decode(ids)
    # the prompt's last token, scored as a prompt token, has the logprob it had when it was generated
    assert lp.token_logprobs[len(ids) - 1] == pytest.approx(first.choices[0].logprobs.token_logprobs[0], abs=2e-2)
    streamed = list(complete(client, ids, max_tokens=1, echo=True, logprobs=1, stream=True))
    chunks = [c.choices[0] for c in streamed if c.choices]
    assert "".join(c.text for c in chunks) == out.choices[0].text
    assert [v for c in chunks for v in c.logprobs.token_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-4)


def test_prompt_logprobs_as_vllm_returns_them(client, tokenizer):
    out = complete(client, max_tokens=1, extra_body={"prompt_logprobs": 2}).to_dict()
    scores = out["choices"][0]["prompt_logprobs"]
    ids = tokenizer(PROMPT)["input_ids"]
    assert len(scores) == len(ids) and scores[0] is None
    for token_id, entry in zip(ids[1:], scores[1:]):
        assert str(token_id) in entry and 2 <= len(entry) <= 3
        assert sorted(e["rank"] for e in entry.values())[:2] == [1, 2]
    answer = chat(client, extra_body={"prompt_logprobs": 0}).to_dict()
    assert answer["prompt_logprobs"][0] is None and len(answer["prompt_logprobs"]) == answer["usage"]["prompt_tokens"]
    assert "-1" in refused(lambda: complete(client, extra_body={"prompt_logprobs": -1}), "prompt_logprobs")
    refused(lambda: complete(client, extra_body={"prompt_logprobs": 1}, stream=True), "prompt_logprobs")


# ---- sampling fields ------------------------------------------------------------------------------------------
def test_logit_bias_changes_the_choice(client, tokenizer):
    reply = complete(client, max_tokens=1, logprobs=0)
    token = tokenizer(PROMPT + reply.choices[0].text)["input_ids"][-1]
    banned = complete(client, max_tokens=1, logit_bias={str(token): -100})
    assert banned.choices[0].text != reply.choices[0].text
    forced_id = tokenizer(" banana")["input_ids"][0]
    forced = complete(client, max_tokens=3, logit_bias={str(forced_id): 100}, extra_body={"ignore_eos": True})
    assert forced.choices[0].text == tokenizer.decode([forced_id] * 3)
    refused(lambda: complete(client, logit_bias={str(len(tokenizer) + 5): 1}), "logit_bias")
    refused(lambda: complete(client, logit_bias={"not-a-token": 1}), "logit_bias")


def test_a_reply_of_invisible_tokens_streams_from_its_first_token(client, tokenizer):
    """Tokens that show no text (a special token, skipped in the text) still start the stream at the first token,
    as vLLM's server does: the opening chunk comes while the reply is generated, and every token's logprob streams."""
    invisible = tokenizer.convert_tokens_to_ids("<|im_start|>")
    chat(client, max_tokens=2, logprobs=True)  # vLLM's first logprobs request stalls its engine for seconds
    start, arrivals, chunks = time.perf_counter(), [], []
    for chunk in chat(client, max_tokens=32, logprobs=True, logit_bias={str(invisible): 100}, stream=True):
        arrivals.append(time.perf_counter() - start)
        chunks.append(chunk)
    choices = [c.choices[0] for c in chunks if c.choices]
    assert "".join(c.delta.content or "" for c in choices) == ""
    assert sum(len(c.logprobs.content) for c in choices if c.logprobs) == 32
    assert arrivals[0] < 0.5 * arrivals[-1], arrivals  # not everything at the end


def test_stop_token_ids_and_min_tokens(client, tokenizer):
    reply = chat(client, max_tokens=8)
    ids = tokenizer(reply.choices[0].message.content, add_special_tokens=False)["input_ids"]
    stopped = chat(client, max_tokens=8, extra_body={"stop_token_ids": [ids[1]]})
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == tokenizer.decode(ids[:1])
    # ignore_eos drops the model's stop ids, never the request's own
    assert chat(client, max_tokens=8, extra_body={"stop_token_ids": [ids[1]], "ignore_eos": True}
                ).choices[0].finish_reason == "stop"
    # min_tokens: no stop before then (the first token is a stop id here, so another one is sampled)
    held = chat(client, max_tokens=8, extra_body={"stop_token_ids": [ids[0]], "min_tokens": 3})
    assert held.usage.completion_tokens >= 3
    assert not held.choices[0].message.content.startswith(tokenizer.decode(ids[:1]))
    refused(lambda: chat(client, max_tokens=2, extra_body={"min_tokens": 3}), "min_tokens")
    refused(lambda: chat(client, extra_body={"stop_token_ids": [len(tokenizer) + 5]}), "stop_token_ids")


def test_n_above_1_with_greedy_is_refused_on_both_backends(client):
    """vLLM's own server: 400 "n must be 1 when using greedy sampling"; streaming too, before the 200."""
    assert "greedy" in refused(lambda: chat(client, n=2), "n")
    refused(lambda: chat(client, n=2, stream=True), "n")
    assert len(chat(client, n=2, temperature=1.0, seed=1).choices) == 2


def test_continuous_usage_stats_puts_usage_on_every_chunk(client):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True},
                       extra_body={"ignore_eos": True}))
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 6
    counts = [c.usage.completion_tokens for c in chunks[:-1]]
    assert all(c.usage is not None and c.usage.prompt_tokens == final.usage.prompt_tokens for c in chunks)
    assert counts == sorted(counts) and counts[-1] == 6


# ---- fields refused by name -----------------------------------------------------------------------------------
REFUSED = [
    ("use_beam_search", {"use_beam_search": True}),
    ("tool_choice", {"tool_choice": "auto"}),
    ("tools", {"tools": [{"type": "function"}]}),
    ("response_format", {"response_format": {"type": "xml"}}),
    ("top_logprobs", {"top_logprobs": 2}),
    ("stream_options", {"stream_options": {"include_usage": True}}),
    ("no_such_field", {"no_such_field": 1}),
    ("stream_options.no_such_option", {"stream": True, "stream_options": {"no_such_option": True}}),
]


@pytest.mark.parametrize("param,body", REFUSED, ids=[r[0] for r in REFUSED])
def test_chat_fields_not_implemented_are_a_400_naming_them(client, param, body):
    refused(lambda: chat(client, extra_body=body), param)


@pytest.mark.parametrize("param,body", [("best_of", {"best_of": 3}), ("suffix", {"suffix": "!"}),
                                        ("logprobs", {"logprobs": 21}),
                                        ("stream_options", {"stream_options": {"include_usage": True}}),
                                        ("use_beam_search", {"use_beam_search": True}), ("echo2", {"echo2": 1})])
def test_completion_fields_not_implemented_are_a_400_naming_them(client, param, body):
    refused(lambda: complete(client, extra_body=body), param)


def test_neutral_values_of_unimplemented_fields_are_accepted(client):
    out = chat(client, extra_body={"use_beam_search": False, "tool_choice": "none", "parallel_tool_calls": True,
                                   "response_format": {"type": "text"}, "user": "u1"})
    assert out.choices[0].message.content


def test_message_keys_are_read_or_refused(client):
    """A reply's message sent back as the SDK dumps it (nulls) is fine, and so are OpenAI's participant `name` (passed
    to the model's chat template, as vLLM does) and tool calls with their results; a key that would be dropped is a
    400."""
    reply = chat(client).choices[0].message.model_dump()  # role, content, refusal=None, tool_calls=None, ...
    turns = [*HELLO, reply, {"role": "user", "content": "And of Italy?"}]
    assert client.chat.completions.create(model=BASE, messages=turns, max_tokens=4).choices[0].message.content
    named = [{"role": "user", "content": "Hi", "name": "bob"}]
    assert client.chat.completions.create(model=BASE, messages=named, max_tokens=4).choices[0].message.content
    called = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    assert client.chat.completions.create(model=BASE, messages=called, max_tokens=4).choices[0].message.content
    unread = [*HELLO, {"role": "assistant", "content": "Paris.", "audio": {"id": "a1"}}, *HELLO]
    assert "audio" in refused(lambda: client.chat.completions.create(model=BASE, messages=unread), "messages")


# ---- models, usage, metrics -----------------------------------------------------------------------------------
def test_retrieve_model(client):
    card = client.models.retrieve(BASE)
    assert card.id == BASE and card.object == "model"
    with pytest.raises(NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["param"] == "model"


def test_usage_has_prompt_tokens_details(client):
    assert chat(client).usage.prompt_tokens_details.cached_tokens >= 0
    assert complete(client).usage.prompt_tokens_details.cached_tokens >= 0
    last = list(chat(client, stream=True, stream_options={"include_usage": True}))[-1]
    assert last.usage.prompt_tokens_details.cached_tokens >= 0


def test_metrics_label_only_known_routes(client):
    root = root_url(client)
    for path in ("/v1/no-such-route-1", "/no-such-route-2", "/v1/models/x/y/z"):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(root + path, timeout=10)
    with urllib.request.urlopen(root + "/metrics", timeout=10) as r:
        text = r.read().decode()
    endpoints = set(re.findall(r'swift_requests_total\{endpoint="([^"]*)"', text))
    assert not any("no-such-route" in e for e in endpoints), endpoints
    assert "other" in endpoints and "/v1/models/{model_id:path}" in endpoints
    body = json.loads(urllib.request.urlopen(root + "/v1/models", timeout=10).read())
    assert body["data"][0]["id"] == BASE


def test_remote_engine_sends_the_new_sampling_fields(client, tokenizer):
    """`swift app-ui --api_url` talks to a server through RemoteEngine: its config reaches the server whole."""
    from swiftcli.engine.remote_engine import RemoteEngine
    from swiftcli.protocol import InferRequest, RequestConfig

    ids = tokenizer(chat(client, max_tokens=8).choices[0].message.content, add_special_tokens=False)["input_ids"]
    engine = RemoteEngine(str(client.base_url))
    config = RequestConfig(max_tokens=8, temperature=0, stop_token_ids=[ids[1]])
    assert engine.infer([InferRequest(messages=HELLO)], config)[0].text == tokenizer.decode(ids[:1])
    forced = RequestConfig(max_tokens=2, temperature=0, logit_bias={ids[1]: 100}, min_tokens=2)
    assert engine.infer([InferRequest(messages=HELLO)], forced)[0].text == tokenizer.decode([ids[1]] * 2)


def test_min_p_reaches_the_engine_from_the_server_and_the_client(client):
    """min_p, declared once in RequestConfig: min_p 1 keeps only the likeliest token, so sampling at temperature 1
    gives the greedy reply whatever the seed (through the SDK's body and through the seed API's XRequestConfig);
    without it, the same seeds sample something else."""
    from swiftcli.llm import XRequestConfig, inference_client

    greedy = complete(client, max_tokens=12).choices[0].text
    kept = {complete(client, max_tokens=12, temperature=1.0, seed=s, extra_body={"min_p": 1.0}).choices[0].text
            for s in range(3)}
    assert kept == {greedy}
    sampled = {complete(client, max_tokens=12, temperature=1.0, seed=s).choices[0].text for s in range(3)}
    assert sampled != {greedy}
    config = XRequestConfig(max_tokens=12, temperature=1.0, seed=5, min_p=1.0)
    reply = inference_client(BASE, PROMPT, request_config=config, is_chat_request=False, url=str(client.base_url))
    assert reply.choices[0].text == greedy
    refused(lambda: complete(client, extra_body={"min_p": 1.5}), "min_p")


def test_response_format_json_schema_is_enforced(client):
    """Structured output on both backends (vLLM: its own structured outputs; pt: xgrammar), through the SDK's body
    and through the seed API's XRequestConfig."""
    import jsonschema

    from swiftcli.llm import XRequestConfig, inference_client
    from swiftcli.request_config import StructuredOutputs

    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    ask = [{"role": "user", "content": 'Give the capital of France as a JSON object with the key "capital".'}]
    reply = client.chat.completions.create(model=BASE, messages=ask, max_tokens=64, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "capital", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    config = XRequestConfig(max_tokens=8, temperature=0, structured_outputs=StructuredOutputs(choice=("yes", "no")))
    answer = inference_client(BASE, "Is Paris in France?", request_config=config, url=str(client.base_url))
    assert answer.choices[0].message.content in ("yes", "no")
    assert "invalid regex" in refused(lambda: chat(client, extra_body={"structured_outputs": {"regex": "("}}),
                                      "structured_outputs")


def test_a_named_tool_choice_is_a_tool_call_on_both_backends(client):
    """Tool calls are read in the serving layer: on vLLM too, a named tool_choice constrains the arguments to the
    function's schema and comes back as `tool_calls`."""
    import jsonschema

    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = chat(client, max_tokens=48, tools=tools, tool_choice=named)
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), schema)

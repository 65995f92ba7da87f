"""Serving for agents, through the official `openai` SDK against `swift deploy`'s real app: structured output, tool
calls and reasoning models. The default model serves the structured-output and tool cases (pt; the vLLM side of
structured output is in test_openai_contract.py); a Qwen3-shaped tiny checkpoint, edited to think, the reasoning
ones; the tool-call parsers read recorded outputs of each family."""
from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import jsonschema
import pytest
from conftest import serve_in_thread, start_swift
from families import save_chain
from openai import BadRequestError, OpenAI
from pydantic import BaseModel

from swiftcli.arguments import InferArguments
from swiftcli.engine import get_engine
from swiftcli.infer.evaluate import evaluate
from swiftcli.infer.repl import run_repl
from swiftcli.tools import parse_tool_calls

pytestmark = pytest.mark.slow

BASE = "smollm2-135m-instruct"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string",
                                                                                  "enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather of a city",
                                           "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(pt_engine) -> Iterator[OpenAI]:
    with serve_in_thread(pt_engine) as url:
        yield OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=300)


def chat(client: OpenAI, messages=ASK, **kwargs):
    return client.chat.completions.create(model=BASE, messages=messages, **{"max_tokens": 64, "temperature": 0,
                                                                             **kwargs})


# ---- structured output ------------------------------------------------------------------------------------------
def test_parse_returns_the_pydantic_object(client):
    class City(BaseModel):
        name: str
        country: str

    reply = client.chat.completions.parse(model=BASE, messages=[{"role": "user", "content": "A city in France?"}],
                                          response_format=City, max_tokens=64, temperature=0)
    city = reply.choices[0].message.parsed
    assert isinstance(city, City) and city.name and city.country


def test_json_object_is_a_json_object_streamed_and_not(client):
    ask = [{"role": "user", "content": 'Give the capital of France as a JSON object with the key "capital".'}]
    whole = chat(client, ask, response_format={"type": "json_object"}, max_tokens=128)
    assert whole.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(whole.choices[0].message.content), dict)
    chunks = chat(client, ask, response_format={"type": "json_object"}, max_tokens=128, stream=True, n=2,
                  temperature=0.8, seed=3)
    texts = ["", ""]
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert all(isinstance(json.loads(text), dict) for text in texts)


def test_structured_output_on_a_lora_adapter(client):
    """The grammar constrains the adapter's logits as it does the base model's."""
    ask = [{"role": "user", "content": 'Give the capital of France as a JSON object with the key "capital".'}]
    word = client.chat.completions.create(model="my_lora", messages=ask, max_tokens=16, temperature=0,
                                          extra_body={"guided_regex": "[A-Z][a-z]{2,10}"})
    assert re.fullmatch("[A-Z][a-z]{2,10}", word.choices[0].message.content)
    pick = client.chat.completions.create(model="my_lora", messages=ask, max_tokens=8, temperature=0,
                                          extra_body={"guided_choice": ["Paris", "Rome"]})
    assert pick.choices[0].message.content in ("Paris", "Rome")


def test_vllm_extensions_regex_and_choice(client):
    date = chat(client, extra_body={"structured_outputs": {"regex": r"\d{4}-\d{2}-\d{2}"}})
    assert len(date.choices[0].message.content) == 10 and date.choices[0].message.content[4] == "-"
    pick = chat(client, extra_body={"guided_choice": ["yes", "no"]})
    assert pick.choices[0].message.content in ("yes", "no")


def test_a_bad_schema_is_a_400_naming_the_field(client):
    with pytest.raises(BadRequestError) as e:
        chat(client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "x"}}})
    assert e.value.body["param"] == "response_format" and "invalid JSON schema" in e.value.body["message"]
    with pytest.raises(BadRequestError) as e:
        chat(client, response_format={"type": "json_object"}, extra_body={"guided_regex": "a+"})
    assert "only one of" in e.value.body["message"]


# ---- tool calls -------------------------------------------------------------------------------------------------
def test_a_named_tool_choice_returns_arguments_that_validate(client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = chat(client, tools=TOOLS, tool_choice=named)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in chat(client, tools=TOOLS, tool_choice=named, stream=True):
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:  # vLLM's order: id and name first, then the arguments
                entry = calls.setdefault(d.index, {"name": None, "arguments": ""})
                if d.function.name:
                    assert entry["name"] is None and not entry["arguments"]
                    entry["name"] = d.function.name
                entry["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == json.loads(call.function.arguments)


def test_the_seed_client_api_passes_tools(client):
    from swiftcli.llm import inference_client

    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = inference_client(BASE, "What is the weather in Paris?", tools=TOOLS, tool_choice=named,
                             url=str(client.base_url))
    (call,) = reply.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_required_tool_choice_calls_one_of_the_tools(client):
    reply = chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=128)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_tool_choice_none_gives_text(client):
    reply = chat(client, tools=TOOLS, tool_choice="none", max_tokens=16)
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "length"


def test_a_tool_result_turn_renders_and_answers(client, pt_engine):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                            "arguments": '{"city": "Paris", "unit": "c"}'}}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}]
    prompt = pt_engine.template.render(history, add_generation_prompt=True, tools=TOOLS)[0]
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>' in prompt
    assert "<tool_response>\n{\"temp\": 21}\n</tool_response>" in prompt
    reply = chat(client, messages=history, tools=TOOLS, max_tokens=24)
    assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(BadRequestError) as e:  # a tool message must answer a call
        chat(client, messages=ASK + [{"role": "tool", "tool_call_id": "x", "content": "1"}], tools=TOOLS)
    assert "tool message must answer" in e.value.body["message"]
    broken = ASK + [{"role": "assistant", "content": None, "tool_calls": [{**call, "function": {
        "name": "get_weather", "arguments": "{not json"}}]}, {"role": "tool", "tool_call_id": "call_1", "content": "1"}]
    with pytest.raises(BadRequestError) as e:  # the client's malformed call: a 400, never a 500
        chat(client, messages=broken, tools=TOOLS)
    assert "a tool call must be" in e.value.body["message"]


BAD_TOOLS = [
    ("tools", {"tools": []}),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]}),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": "abc"}}]}),
    ("tools", {"tools": TOOLS + TOOLS}),
    ("tool_choice", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ("messages", {"tools": TOOLS, "messages": ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "zzz", "content": "1"}]}),
    ("guided_choice", {"guided_choice": []}),
]


@pytest.mark.parametrize("param,body", BAD_TOOLS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_TOOLS)])
def test_malformed_tools_and_constraints_are_a_400_naming_the_field(client, param, body):
    """Checked when the request arrives, whatever tool_choice is: never a 500, never silently ignored."""
    body = dict(body)
    messages = body.pop("messages", ASK)
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model=BASE, messages=messages, max_tokens=4, extra_body=body)
    assert e.value.body["param"] == param


def test_swift_infer_json_schema_constrains_every_reply(tmp_path):
    """`swift infer --json_schema` for the REPL fed by a pipe: each reply parses and matches the schema."""
    import subprocess
    import sys

    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
              "required": ["capital"], "additionalProperties": False}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    out = subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--infer_backend", "pt", "--json_schema",
                          "schema.json", "--max_new_tokens", "48", "--temperature", "0", "--stream", "false"],
                         input="The capital of France?\nThe capital of Italy?\n", capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr
    replies = [block.strip() for block in out.stdout.split("-" * 50) if block.strip()]
    replies = [r.removeprefix("<<<").strip() for r in replies]
    assert len(replies) == 2
    for reply in replies:
        jsonschema.validate(json.loads(reply), schema)
    bad = subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--json_schema", '{"type": "objekt"}'],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == 'swift: error: --json_schema: invalid JSON schema: ' \
                                                           'Unsupported type "objekt"'


def test_the_families_own_templates_render_tools_and_calls(families):
    """Qwen2.5, Llama-3.1 and Mistral v0.3's official templates get the tools (`tools=`), the call and its result."""
    from swiftcli.model import load_tokenizer
    from swiftcli.template import get_template

    call = {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": '{"city": "Paris", "unit": "c"}'}}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "abcdefghi", "content": '{"temp": 21}'}]
    for name in ("qwen2_5", "llama3_1", "mistral_v0_3"):
        template = get_template("auto", load_tokenizer(families(name)))
        prompt = template.render(history, add_generation_prompt=True, tools=TOOLS)[0]
        assert '"get_weather"' in prompt and '"description": "The weather of a city"' in prompt, name
        assert '"city": "Paris"' in prompt and "temp" in prompt and "21" in prompt, name  # (Llama quotes results)


# Recorded replies (the formats of each family's model card / vLLM's parser tests) and malformed ones.
PARSED = [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
               '</tool_call>', "Let me check.", [("get_weather", {"city": "Paris", "unit": "c"})]),
    ("hermes", '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "b", "arguments": '
               '{"x": 1}}\n</tool_call>', None, [("a", {}), ("b", {"x": 1})]),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}', None,
     [("get_weather", {"city": "Paris", "unit": "c"})]),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}', None,
     [("a", {}), ("b", {"x": 1})]),
    ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}]', None,
     [("get_weather", {"city": "Paris", "unit": "c"})]),
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>', None, []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city"', None, []),
    ("mistral", '[TOOL_CALLS] [{"arguments": {}}]', None, []),
    ("hermes", "Paris is sunny today.", None, []),
]


@pytest.mark.parametrize("parser,text,content,calls", PARSED)
def test_tool_call_parsers_read_each_format_and_leave_malformed_text_alone(parser, text, content, calls):
    got_content, got_calls = parse_tool_calls(parser, text)
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    if calls:
        assert got_content == content and all(c.id for c in got_calls)
        assert all(len(c.id) == 9 and c.id.isalnum() for c in got_calls) or parser != "mistral"
    else:
        assert got_content == text  # unreadable or no calls: the reply is plain content, never an error


# ---- reasoning models ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def thinker_dir(families, tmp_path_factory) -> str:
    """A Qwen3-shaped checkpoint whose greedy reply is `<think>Think</think>Paris` after the generation prompt, and
    `Paris` alone after the prompt of `enable_thinking: false` (which ends with the empty think block's `\\n\\n`)."""
    return save_chain(families("qwen3"), {"Ċ": "<think>", "<think>": "Think", "Think": "</think>",
                                          "</think>": "Paris", "ĊĊ": "Paris", "Paris": "<|im_end|>"},
                      tmp_path_factory.mktemp("thinker"))


@pytest.fixture(scope="module")
def thinker(thinker_dir):
    return get_engine(InferArguments(model_id_or_path=thinker_dir, infer_backend="pt"))


@pytest.fixture(params=["pt", pytest.param("vllm", marks=pytest.mark.vllm)])
def thinker_client(request, tmp_path) -> Iterator[OpenAI]:
    """The thinker behind `swift deploy`: pt in this process, vLLM as the user starts it."""
    if request.param == "pt":
        engine = request.getfixturevalue("thinker")
        assert engine.template.reasoning_parser == "qwen3"
        with serve_in_thread(engine) as url:
            yield OpenAI(base_url=url, api_key="EMPTY", max_retries=0)
        return
    server = start_swift(tmp_path, "thinker-vllm", "deploy", "--model_id_or_path", request.getfixturevalue(
        "thinker_dir"), "--infer_backend", "vllm", "--enforce_eager", "true", "--max_model_len", "1024")
    try:
        server.wait_ready(600)
        yield server.client()
    finally:
        server.stop(120)


def test_reasoning_content_is_split_from_the_answer(thinker_client):
    """reasoning_content apart from content, whole and streamed, on both backends; enable_thinking false per
    request (chat_template_kwargs) leaves no reasoning."""
    client = thinker_client
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=ASK, max_tokens=10, temperature=0)
    message = reply.choices[0].message
    assert (message.reasoning_content, message.content) == ("Think", "Paris")
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model=model, messages=ASK, max_tokens=10, temperature=0,
                                                stream=True):
        for c in chunk.choices:
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            content += c.delta.content or ""
    assert (reasoning, content) == ("Think", "Paris")
    plain = client.chat.completions.create(model=model, messages=ASK, max_tokens=10, temperature=0,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert (plain.choices[0].message.reasoning_content, plain.choices[0].message.content) == (None, "Paris")




def test_the_repl_dims_the_reasoning_and_keeps_the_answer(thinker, tmp_path):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    run_repl(thinker, InferArguments(infer_backend="pt"), io.StringIO("What is the capital?\n"), out)
    assert "\033[2mThink\033[0m\nParis" in out.getvalue()
    from swiftcli.dataset import Row

    rows = [Row("x:0", [{"role": "user", "content": "What is the capital?"},
                        {"role": "assistant", "content": "Paris"}])]
    evaluate(thinker, InferArguments(infer_backend="pt"), rows, str(tmp_path / "r.jsonl"))
    line = json.loads((tmp_path / "r.jsonl").read_text())
    assert (line["reasoning"], line["response"]) == ("Think", "Paris")


def test_app_ui_shows_the_thinking_apart_and_does_not_send_it_back(thinker):
    from swiftcli.app_ui.app import chat_messages, chat_reply
    from swiftcli.protocol import InferRequest, RequestConfig

    text = thinker.infer([InferRequest(messages=ASK)], RequestConfig(max_tokens=10, temperature=0))[0].text
    thinking, answer = chat_reply(thinker.template.reasoning_parser, text)
    assert (thinking.content, thinking.metadata["title"], answer.content) == ("Think", "Thinking", "Paris")
    history = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "Think", "metadata": {
        "title": "Thinking"}}, {"role": "assistant", "content": "Paris", "metadata": None}]
    assert chat_messages("Next?", history, "") == [{"role": "user", "content": "Q"},
                                                   {"role": "assistant", "content": "Paris"},
                                                   {"role": "user", "content": "Next?"}]

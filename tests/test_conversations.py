"""Conversations as users send them (issue 15, kinds 3, 6, 11, 12), on the families' official chat templates.

- A chat template that rejects a conversation is the client's error (400 / one line / the REPL goes on), and a
  system prompt is folded into the first user turn where the template has no system role (Gemma-2).
- A fine-tuned checkpoint is queried with the prompt it was trained on, token for token, for every family.
- A conversation ending with an assistant message is continued (vLLM's `continue_final_message`, with `echo`) or
  followed by a new assistant turn, never rendered as the finished training sample.
- Bytes that are not UTF-8 on the REPL's stdin, and lone surrogates in a JSON request, are reported, not crashes.

Template checks need only the tokenizers of tests/families.py; the rest runs the default model on the pt backend.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import serve_in_thread
from families import CHAT_FAMILIES
from openai import BadRequestError, OpenAI

from swiftcli.arguments import InferArguments, SftArguments
from swiftcli.checkpoint import write_ckpt_args
from swiftcli.engine import build_template
from swiftcli.engine.base import EngineInfo, InferEngine
from swiftcli.errors import ArgumentError
from swiftcli.infer.repl import SEPARATOR, run_repl
from swiftcli.model import load_tokenizer, resolve_model
from swiftcli.protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, Usage
from swiftcli.registry import detect_model_meta
from swiftcli.template import IGNORE_INDEX, Template, get_template
from swiftcli.sft.data import encode_rows, training_rows
from swiftcli.sft.sft import resolved_args, training_template

SYSTEM = "Be brief."
QUESTION = "What is the capital of France?"
PREFIX = "The capital of France is"
PREFILL = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": PREFIX}]
ONE_QUESTION = "This model takes one question at a time"


def official(tokenizer, messages, **kwargs) -> list[int]:
    """The ids `tokenizer.apply_chat_template` gives (what vLLM's server sends the model)."""
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


class PromptRecorder(InferEngine):
    """An engine without weights: records the prompt ids of each request (engine.encode, as both engines do) and
    answers with the next scripted reply."""

    def __init__(self, template: Template, replies: list[str]):
        self.template, self.replies, self.prompts = template, list(replies), []
        self.info = EngineInfo("recorder", "", "pt", "float32", 4096)
        self.default_config = RequestConfig()

    def _answer(self, request: InferRequest) -> str:
        self.prompts.append(self.encode(request).input_ids)
        return self.replies.pop(0)

    def infer(self, requests, config=None, use_tqdm=False) -> list[InferResponse]:
        return [InferResponse([Choice(0, self._answer(r), "stop")], Usage()) for r in requests]

    def infer_stream(self, request, config=None) -> Iterator[StreamDelta]:
        yield StreamDelta(0, self._answer(request), "stop", usage=Usage())


# ---- 3. a template that has no system role, or rejects a conversation --------------------------------------------
def test_auto_template_folds_the_system_prompt_where_the_template_has_no_system_role(families, caplog):
    """Gemma-2's jinja raises 'System role not supported': the system prompt goes in front of the first user
    message (Gemma-3's own rule), for inference and training alike, with one warning."""
    tokenizer = load_tokenizer(families("gemma2"))
    template = get_template("auto", tokenizer)
    folded = [{"role": "user", "content": f"{SYSTEM}\n\n{QUESTION}"}]
    with caplog.at_level(logging.WARNING, logger="swiftcli"):
        ids = template.encode([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                              add_generation_prompt=True).input_ids
        train = template.encode([{"role": "system", "content": SYSTEM}, *PREFILL])
    assert ids == official(tokenizer, folded, add_generation_prompt=True)
    assert train.input_ids == official(tokenizer, folded + [PREFILL[1]])
    assert tokenizer.decode([t for t, label in zip(train.input_ids, train.labels) if label != IGNORE_INDEX]) \
        .startswith(PREFIX)
    assert [r.getMessage() for r in caplog.records if "no system role" in r.getMessage()] == [
        "template 'auto' has no system role: the system prompt is put in front of the first user message"]
    # --system (the template's default system) is folded the same way
    assert get_template("auto", tokenizer, default_system=SYSTEM).encode(QUESTION).input_ids == ids


def test_registered_template_without_a_system_role_folds_too(families):
    """A registered template without `system_prefix` (Gemma's shape) folds the system prompt as the official jinja
    of that family expects it, instead of refusing."""
    tokenizer = load_tokenizer(families("gemma2"))
    gemma = Template("gemma-test", prefix="{{BOS}}", prompt="<start_of_turn>user\n{{QUERY}}<end_of_turn>\n"
                     "<start_of_turn>model\n", chat_sep="<end_of_turn>\n", suffix="<end_of_turn>\n",
                     strip_content=True, tokenizer=tokenizer)
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
    folded = [{"role": "user", "content": f"{SYSTEM}\n\n{QUESTION}"}]
    assert gemma.encode(messages).input_ids == official(tokenizer, folded, add_generation_prompt=True)


@pytest.fixture(scope="module")
def picky_model(families, tmp_path_factory) -> str:
    """The tiny Gemma-2 checkpoint whose chat template also refuses a conversation with history (as some models'
    templates refuse roles, tools or lengths they don't take)."""
    out = str(tmp_path_factory.mktemp("picky") / "gemma2-one-question")
    shutil.copytree(families("gemma2"), out)
    path = os.path.join(out, "tokenizer_config.json")
    config = json.load(open(path, encoding="utf-8"))
    jinja = os.path.join(out, "chat_template.jinja")
    text = open(jinja, encoding="utf-8").read() if os.path.isfile(jinja) else config["chat_template"]
    text = ("{% if messages|length > 2 %}{{ raise_exception('" + ONE_QUESTION + "') }}{% endif %}" + text)
    if os.path.isfile(jinja):
        open(jinja, "w", encoding="utf-8").write(text)
    else:
        config["chat_template"] = text
        json.dump(config, open(path, "w", encoding="utf-8"))
    return out


def test_repl_folds_system_and_reports_a_template_error_for_that_turn_only(picky_model, tmp_path):
    """`swift infer --system` on a template without a system role answers (warning once); a turn the template
    refuses is one error line, the REPL goes on with the next line, and a pipe with a failed turn exits 2."""
    lines = ["Hi", "And then?", "clear", "Hello"]
    proc = subprocess.run(
        [sys.executable, "-m", "swiftcli", "infer", "--model_id_or_path", picky_model, "--infer_backend", "pt",
         "--system", SYSTEM, "--max_new_tokens", "4"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the model's chat template rejected the conversation: {ONE_QUESTION}"], proc.stderr
    assert proc.stderr.count("has no system role") == 1, proc.stderr
    assert proc.stdout.count(SEPARATOR) == 2, proc.stdout  # "Hi" and "Hello" answered


def test_server_answers_400_with_the_templates_message(picky_model):
    from swiftcli.engine import get_engine

    engine = get_engine(InferArguments(model_id_or_path=picky_model, infer_backend="pt", max_new_tokens=4))
    with serve_in_thread(engine) as url:
        client = OpenAI(base_url=url, api_key="EMPTY", max_retries=0)
        model = engine.info.model_type
        # a system message on a template without a system role: folded, answered
        reply = client.chat.completions.create(model=model, max_tokens=2, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}])
        assert reply.usage.prompt_tokens == len(official(engine.template.tokenizer, [
            {"role": "user", "content": f"{SYSTEM}\n\nHi"}], add_generation_prompt=True))
        history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                   {"role": "user", "content": "And then?"}]
        for stream in (False, True):
            with pytest.raises(BadRequestError) as e:
                client.chat.completions.create(model=model, messages=history, max_tokens=2, stream=stream)
            assert e.value.status_code == 400
            assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "messages"
            assert ONE_QUESTION in e.value.body["message"]
        assert client.chat.completions.create(model=model, max_tokens=2, messages=history[:1]).choices


# ---- 6. a fine-tuned checkpoint is asked with the prompt it was trained on ----------------------------------------
@pytest.mark.parametrize("system", [None, SYSTEM], ids=["template-system", "system-flag"])
@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_ckpt_dir_prompt_equals_the_training_prompt(families, family, system, tmp_path):
    """`swift sft` encodes a one-turn and a two-turn row and records args.json; `swift infer --ckpt_dir` then asks
    the same questions in its REPL. Each prompt must equal its training row's ids up to the reply, token for token
    (the training rows carry no system of their own: the template's default or --system applies on both sides)."""
    model_dir = families(family)
    data = tmp_path / "data.jsonl"
    rows = [{"query": QUESTION, "response": "Paris."},
            {"query": "And of Italy?", "response": "Rome.", "history": [[QUESTION, "Paris."]]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = SftArguments(model_id_or_path=model_dir, dataset=[str(data)], dataset_test_ratio=0.0, system=system,
                       output_dir=str(tmp_path / "output"))
    # what train_sft does before training: the template, the encoded rows, the args.json of every checkpoint
    meta, _ = resolve_model(sft.model_type, sft.model_id_or_path, sft.model_revision, sft.use_hf)
    template = training_template(sft, meta, load_tokenizer(model_dir))
    train_rows, _ = training_rows(sft)
    encoded, stats = encode_rows(sorted(train_rows, key=lambda r: len(r.messages)), template, None, "delete")
    assert stats.kept == 2, stats.summary(None)
    ckpt = tmp_path / "checkpoint-1"
    shutil.copytree(model_dir, ckpt)  # full weights, as `--sft_type full` saves them
    write_ckpt_args(str(ckpt), json.loads(json.dumps(resolved_args(sft, meta, template, "fp32"), default=str)))

    args = InferArguments(ckpt_dir=str(ckpt), infer_backend="pt")
    meta, ckpt_model_dir = resolve_model(args.model_type, args.model_id_or_path, args.model_revision, args.use_hf)
    engine = PromptRecorder(build_template(args, meta, load_tokenizer(ckpt_model_dir)), ["Paris.", "Rome."])
    assert run_repl(engine, args, stdin=io.StringIO(f"{QUESTION}\nAnd of Italy?\n"), stdout=io.StringIO()) == 0
    tokenizer = template.tokenizer
    for prompt, row in zip(engine.prompts, encoded):
        trained = row["input_ids"][:len(prompt)]
        assert prompt == trained, f"inference:\n{tokenizer.decode(prompt)!r}\ntraining:\n{tokenizer.decode(trained)!r}"
        assert row["labels"][len(prompt) - 1] == IGNORE_INDEX  # the prompt ends before the reply it asks for


# ---- 11. a conversation that ends with an assistant message ------------------------------------------------------
@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_prefill_is_continued_or_followed_by_a_new_turn_as_the_official_template_renders_it(families, family):
    """continue_final_message == transformers' (what vLLM sends); the default opens a new assistant turn; where
    the template can't (Mistral ends every reply with </s> and has no assistant header) it is a clear error. A prompt
    is never the finished training sample."""
    tokenizer = load_tokenizer(families(family))
    template = get_template(detect_model_meta(families(family)).template, tokenizer)
    training = template.encode(PREFILL).input_ids
    cont = template.encode(PREFILL, continue_final_message=True).input_ids
    assert cont == official(tokenizer, PREFILL, continue_final_message=True)
    assert tokenizer.decode(cont).endswith(PREFIX)
    new_turn = official(tokenizer, PREFILL, add_generation_prompt=True)
    if new_turn == training:
        with pytest.raises(ArgumentError, match="cannot open a new assistant turn"):
            template.encode(PREFILL, add_generation_prompt=True)
    else:
        assert template.encode(PREFILL, add_generation_prompt=True).input_ids == new_turn
    with pytest.raises(ArgumentError, match="add_generation_prompt is false"):
        template.encode(PREFILL, add_generation_prompt=False)
    # a final user message without the generation prompt, and continued
    for kwargs in (dict(add_generation_prompt=False), dict(continue_final_message=True)):
        assert template.encode(PREFILL[:1], **kwargs).input_ids == official(tokenizer, PREFILL[:1], **kwargs)


@pytest.mark.parametrize("template_type", ["qwen", "qwen2_5", "yi", "smollm2", "llama3", "llama"])
def test_registered_templates_render_prefills_as_their_official_jinja(template_type, model_dir):
    """Registered templates against the official jinja of tests/test_template.py: the continued reply, and the new
    assistant turn."""
    from test_template import DEFAULT_SYSTEM_NOT_IN_JINJA, JINJA_KWARGS, OFFICIAL

    tokenizer = load_tokenizer(model_dir)
    template = get_template(template_type, tokenizer)
    system = DEFAULT_SYSTEM_NOT_IN_JINJA.get(template_type)
    messages = ([{"role": "system", "content": system}] if system else []) + PREFILL
    jinja = dict(chat_template=OFFICIAL[template_type], **JINJA_KWARGS.get(template_type, {}))
    assert template.encode(PREFILL, continue_final_message=True).input_ids == \
        official(tokenizer, messages, continue_final_message=True, **jinja)
    new_turn = official(tokenizer, messages, add_generation_prompt=True, **jinja)
    if new_turn != official(tokenizer, messages, **jinja):
        assert template.encode(PREFILL, add_generation_prompt=True).input_ids == new_turn
        return
    # the official jinja cannot open a turn after a reply (Llama-2, Yi): ours opens one where its parts can, else
    # it is a clear error; never the finished sample
    try:
        text, _ = template.render(PREFILL, add_generation_prompt=True)
    except ArgumentError as e:
        assert "cannot render a new assistant turn" in str(e)
        return
    header = template.render(PREFILL[:1])[0][len(template.render(PREFILL[:1], add_generation_prompt=False)[0]):]
    assert text == template.render(PREFILL, continue_final_message=True)[0] + template._fill(template.chat_sep) + header


@pytest.fixture(scope="module")
def server(pt_engine) -> Iterator[OpenAI]:
    with serve_in_thread(pt_engine) as url:
        yield OpenAI(base_url=url, api_key="EMPTY", max_retries=0)


def test_server_continues_the_final_message(server, pt_engine):
    """The default model continues "The capital of France is" with " Paris"; `echo` puts the prefix in front, in
    the whole reply and in the stream."""
    model, tokenizer = pt_engine.info.model_type, pt_engine.template.tokenizer
    flags = {"continue_final_message": True, "add_generation_prompt": False}
    reply = server.chat.completions.create(model=model, messages=PREFILL, max_tokens=4, temperature=0,
                                           extra_body=flags)
    assert reply.choices[0].message.content.startswith(" Paris")
    assert reply.usage.prompt_tokens == len(official(tokenizer, PREFILL, continue_final_message=True))
    echoed = server.chat.completions.create(model=model, messages=PREFILL, max_tokens=4, temperature=0,
                                            extra_body={**flags, "echo": True})
    assert echoed.choices[0].message.content == PREFIX + reply.choices[0].message.content
    stream = server.chat.completions.create(model=model, messages=PREFILL, max_tokens=4, temperature=0, stream=True,
                                            extra_body={"continue_final_message": True, "echo": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == echoed.choices[0].message.content


def test_server_opens_a_new_turn_after_a_final_assistant_message(server, pt_engine):
    """Without continue_final_message the prompt is the conversation plus a new assistant turn (vLLM's default,
    add_generation_prompt true), not the training sample."""
    tokenizer = pt_engine.template.tokenizer
    reply = server.chat.completions.create(model=pt_engine.info.model_type, messages=PREFILL, max_tokens=2)
    assert reply.usage.prompt_tokens == len(official(tokenizer, PREFILL, add_generation_prompt=True))


@pytest.mark.parametrize("body, param, message", [
    ({"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message",
     "Cannot set both `continue_final_message` and `add_generation_prompt` to True."),
    ({"add_generation_prompt": False}, "add_generation_prompt", "add_generation_prompt is false"),
])
def test_server_refuses_what_it_cannot_render(server, pt_engine, body, param, message):
    with pytest.raises(BadRequestError) as e:
        server.chat.completions.create(model=pt_engine.info.model_type, messages=PREFILL, max_tokens=2,
                                       extra_body=body)
    assert e.value.body["param"] == param and message in e.value.body["message"]


def test_python_api_continues_the_final_message(pt_engine):
    config = RequestConfig(max_tokens=4, temperature=0)
    [reply] = pt_engine.infer([InferRequest(messages=PREFILL, continue_final_message=True)], config)
    assert reply.text.startswith(" Paris")
    assert "".join(d.text for d in pt_engine.infer_stream(
        InferRequest(messages=PREFILL, continue_final_message=True), config)) == reply.text


# ---- 12. bytes that are not UTF-8, lone surrogates ---------------------------------------------------------------
def test_repl_replaces_undecodable_bytes_says_so_and_answers_the_next_line(pt_engine, capsys):
    stdin = io.TextIOWrapper(io.BytesIO(f"What is the capital of Fr\xe9nce?\n{QUESTION}\n".encode("latin-1")),
                             encoding="utf-8")
    stdout = io.StringIO()
    args = InferArguments(infer_backend="pt", max_new_tokens=16, temperature=0)
    assert run_repl(pt_engine, args, stdin=stdin, stdout=stdout) == 0
    answers = stdout.getvalue().split(SEPARATOR)
    assert len(answers) == 3 and "Paris" in answers[1], answers
    err = capsys.readouterr().err
    assert err.count("not valid utf-8: its undecodable bytes were replaced with U+FFFD") == 1, err


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("path, fields, param", [
    ("chat/completions", '"messages": [{"role": "user", "content": "Paris \\ud83c is"}]', "messages"),
    ("chat/completions", '"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc80"}]}]',
     "messages"),
    ("chat/completions", '"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]', "stop"),
    ("completions", '"prompt": "The capital \\ud83c of France is"', "prompt"),
])
def test_lone_surrogates_in_a_request_are_a_400(server, pt_engine, path, fields, param):
    """JSON can escape half a surrogate pair; that is no text: 400 naming the field, then the server goes on."""
    url = str(server.base_url).rstrip("/")
    body = f'{{"model": "{pt_engine.info.model_type}", "max_tokens": 2, {fields}}}'.encode()
    status, reply = _post(f"{url}/{path}", body)
    assert status == 400, reply
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["param"] == param
    assert "not valid Unicode" in reply["error"]["message"]
    assert server.chat.completions.create(model=pt_engine.info.model_type, max_tokens=1,
                                          messages=[{"role": "user", "content": "hi"}]).choices

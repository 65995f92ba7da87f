"""Chat templates: our ids against the model families' official jinja templates, labels, and the template API.

Every official template below is rendered by `tokenizer.apply_chat_template(..., chat_template=OFFICIAL[name])`
with the embedded SmolLM2 tokenizer, and our `get_template(name, tokenizer).encode(...)` must give the same ids.
Both sides turn the same text into ids with the same tokenizer, so special tokens that the SmolLM2 vocabulary
lacks (`<|eot_id|>`, `[INST]`, ...) are split into ordinary pieces identically on both sides: equal ids mean equal
text. The official jinja's `bos_token` / `eos_token` are the tokenizer's (`<|im_start|>` / `<|im_end|>`), exactly
what our `{{BOS}}` / `{{EOS}}` become.

Needs only the tokenizer (no weights); no network.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import pytest

from swiftcli.errors import ArgumentError, ContextLengthError
from swiftcli.model import embedded_model_dir, load_tokenizer
from swiftcli.template import IGNORE_INDEX, TEMPLATE_MAPPING, Template, get_template

# ---- the official templates (test data) ------------------------------------------------------------------------

# Generic ChatML: vLLM's examples/template_chatml.jinja.
CHATML = (r"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']}}"
          r"{% if (loop.last and add_generation_prompt) or not loop.last %}{{ '<|im_end|>' + '\n'}}{% endif %}"
          r"{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
          r"{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen-7B-Chat builds this prompt in Python (make_context, system "You are a helpful assistant."); its jinja form,
# with the same default system, is Qwen2-7B-Instruct's tokenizer_config chat_template. (Qwen1.5-Chat's jinja is the
# same but its default system lacks the final period; ms-swift's `qwen` keeps Qwen-7B-Chat's.)
QWEN = (r"{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        r"{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        r"{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Qwen2.5-7B-Instruct's tokenizer_config chat_template, with the `tools` branch (the system prompt listing the tools)
# left out: we don't take tools.
QWEN2_5 = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Yi-6B-Chat (and Yi-34B-Chat, Yi-1.5-*-Chat): the system prompt is written bare, and the assistant header always
# follows a user turn (there is no add_generation_prompt switch).
YI = (r"{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}{% endif %}"
      r"{% if system_message is defined %}{{ system_message }}{% endif %}{% for message in messages %}"
      r"{% set content = message['content'] %}{% if message['role'] == 'user' %}"
      r"{{ '<|im_start|>user\n' + content + '<|im_end|>\n<|im_start|>assistant\n' }}"
      r"{% elif message['role'] == 'assistant' %}{{ content + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}")

# SmolLM2-135M-Instruct's chat_template.jinja (checked against the embedded checkpoint's below).
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
           "<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# meta-llama/Llama-2-7b-chat-hf tokenizer_config chat_template (the current one, without a default system).
LLAMA2 = (r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          r"{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          r"{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          r"{% if loop.index0 == 0 and system_message != false %}"
          r"{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
          r"{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
          r"{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
          r"{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

# meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config chat_template.
LLAMA3 = (r"{% set loop_messages = messages %}{% for message in loop_messages %}"
          r"{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
          r"+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          r"{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
          r"{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

OFFICIAL = {"chatml": CHATML, "qwen": QWEN, "qwen2_5": QWEN2_5, "yi": YI, "smollm2": SMOLLM2, "llama": LLAMA2,
            "llama3": LLAMA3}

LLAMA2_DEFAULT_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information.")

# ms-swift behaviour: a template's default system is used whenever the request brings none. Where the official
# jinja does not add that default itself (Llama-2's current template has none), the official side is rendered with
# it as an explicit system message. qwen, qwen2_5 and smollm2's jinjas add their own default, which must be ours.
DEFAULT_SYSTEM_NOT_IN_JINJA = {"llama": LLAMA2_DEFAULT_SYSTEM}

# Llama-3's jinja writes `bos_token`, which for a Llama-3 tokenizer is `<|begin_of_text|>` (what ms-swift's llama3
# template writes); the SmolLM2 tokenizer's bos is `<|im_start|>`, so the official side gets the Llama-3 bos.
JINJA_KWARGS = {"llama3": {"bos_token": "<|begin_of_text|>"}}

# ---- conversations ---------------------------------------------------------------------------------------------
SYSTEM = "You are a pirate. Answer in one line."
Q1, R1 = "What is the capital of France?", "Arr, Paris it be."
Q2, R2 = "And of Germany?", "Berlin, matey."
Q3 = "Which one is bigger?"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


CONVERSATIONS = {
    "single": [user(Q1)],
    "multi": [user(Q1), assistant(R1), user(Q2), assistant(R2), user(Q3)],
    "system-single": [system(SYSTEM), user(Q1)],
    "system-multi": [system(SYSTEM), user(Q1), assistant(R1), user(Q2), assistant(R2), user(Q3)],
    # Non-ASCII, inner newlines, and text that looks like our placeholders: all must pass through untouched.
    "unicode": [user("北京在哪里？\n请用一句话回答。"), assistant("北京在中国北方。"),
                user("Keep {{QUERY}} and {{EOS}} as text.")],
    # Whitespace around contents: Llama-2 (`.strip()`) and Llama-3 (`| trim`) strip it, the ChatML family keeps it.
    "padded": [user("  What is 2+2? \n"), assistant(" 4\n"), user("\tAnd 3+3?  ")],
    "system-padded": [system("  Be brief.\n"), user("  What is 2+2? \n"), assistant(" 4\n"), user("\tAnd 3+3?  ")],
}
TRAIN = [user(Q1), assistant(R1), user(Q2), assistant(R2)]


# ---- fixtures and helpers --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(embedded_model_dir())


@pytest.fixture(scope="module")
def family_tok(tok):
    """The SmolLM2 tokenizer knowing the other families' special tokens too, so that every template's end token is
    one token and labelled spans decode cleanly (no BPE piece straddling a reply's edge)."""
    tokenizer = copy.deepcopy(tok)
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
        "[gMASK]", "<|system|>", "<|user|>", "<|assistant|>"]})
    return tokenizer


def ids_of(out) -> list[int]:
    """apply_chat_template(tokenize=True) returns a BatchEncoding in transformers 5 (return_dict=True by default),
    a plain list in 4.x."""
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def official_ids(tokenizer, name: str, messages) -> list[int]:
    if messages[0]["role"] != "system" and name in DEFAULT_SYSTEM_NOT_IN_JINJA:
        messages = [system(DEFAULT_SYSTEM_NOT_IN_JINJA[name])] + messages
    return ids_of(tokenizer.apply_chat_template(messages, chat_template=OFFICIAL[name], add_generation_prompt=True,
                                                tokenize=True, **JINJA_KWARGS.get(name, {})))


def text_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def labelled_runs(tokenizer, encoded) -> list[str]:
    """The labelled stretches of `encoded`, decoded; checks that labels copy input_ids where they are set."""
    runs, current = [], []
    for tid, label in zip(encoded.input_ids, encoded.labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == tid
            current.append(tid)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


# ---- golden ids against the official templates -----------------------------------------------------------------
def test_every_chat_template_with_an_official_jinja_is_covered():
    # A template added later with a known official jinja should get its reference here.
    no_official_jinja = {"default", "default-generation", "chatglm3", "auto"}
    assert set(TEMPLATE_MAPPING) - no_official_jinja == set(OFFICIAL)


def test_smollm2_reference_is_the_embedded_checkpoints_template(tok):
    assert tok.chat_template == SMOLLM2


@pytest.mark.parametrize("case", CONVERSATIONS)
@pytest.mark.parametrize("name", OFFICIAL)
def test_ids_equal_official_template(tok, name, case):
    messages = CONVERSATIONS[case]
    ours = get_template(name, tok).encode(messages).input_ids
    theirs = official_ids(tok, name, messages)
    assert tok.decode(ours) == tok.decode(theirs)  # readable diff first
    assert ours == theirs


@pytest.mark.parametrize("case", ["multi", "padded"])
def test_llama_without_its_default_system_equals_official_without_system(tok, case):
    messages = CONVERSATIONS[case]
    ours = get_template("llama", tok, default_system="").encode(messages).input_ids
    theirs = ids_of(tok.apply_chat_template(messages, chat_template=LLAMA2, add_generation_prompt=True))
    assert ours == theirs
    assert "<<SYS>>" not in tok.decode(ours)


def test_default_system_empty_drops_the_system_block(tok):
    text = tok.decode(get_template("qwen", tok, default_system="").encode(Q1).input_ids)
    assert text == f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n"
    assert get_template("qwen", tok).default_system == "You are a helpful assistant."


# ---- templates without an official jinja: ms-swift 2.x's format (msswift.md §7) -------------------------------
def test_default_template_text(tok):
    t = get_template("default", tok)
    eos = tok.eos_token
    assert t.encode(Q1).input_ids == text_ids(
        tok, f"You are a helpful assistant.\n\n### Human:\n{Q1}\n\n### Assistant:\n")
    expected = (f"{SYSTEM}\n\n### Human:\n{Q1}\n\n### Assistant:\n{R1}\n\n### Human:\n{Q2}\n\n### Assistant:\n{R2}"
                f"\n\n### Human:\n{Q3}\n\n### Assistant:\n")
    assert tok.decode(t.encode(CONVERSATIONS["system-multi"]).input_ids) == expected
    assert t.encode(CONVERSATIONS["system-multi"]).input_ids == text_ids(tok, expected)
    trained = t.encode([system(SYSTEM)] + TRAIN)
    assert tok.decode(trained.input_ids).endswith(f"### Assistant:\n{R2}{eos}")


def test_chatglm3_template_text(tok):
    t = get_template("chatglm3", tok)
    assert t.default_system is None
    assert tok.decode(t.encode(Q1).input_ids) == f"[gMASK]sop<|user|>\n{Q1}<|assistant|>\n"
    expected = (f"[gMASK]sop<|system|>\n{SYSTEM}<|user|>\n{Q1}<|assistant|>\n{R1}<|user|>\n{Q2}<|assistant|>\n{R2}"
                f"<|user|>\n{Q3}<|assistant|>\n")
    assert t.encode(CONVERSATIONS["system-multi"]).input_ids == text_ids(tok, expected)
    assert tok.decode(t.encode(TRAIN).input_ids).endswith(f"<|assistant|>\n{R2}<|user|>")


def test_default_generation_template_text(tok):
    t = get_template("default-generation", tok)
    assert t.is_generation and not t.support_multi_round and not t.support_system
    assert t.encode(Q1).input_ids == text_ids(tok, Q1)
    trained = t.encode([user(Q1), assistant(R1)])
    assert trained.input_ids == text_ids(tok, Q1 + R1 + tok.eos_token)
    assert labelled_runs(tok, trained) == [R1 + tok.eos_token]


def test_auto_add_bos_follows_the_tokenizer(tok):
    """ms-swift's auto_add_bos: default, default-generation, chatml and yi start with bos when the tokenizer adds
    one by itself (Llama-style); qwen never does. The SmolLM2 tokenizer adds none, so turn that on in a copy."""
    bos_tok = copy.deepcopy(tok)
    bos_tok.add_bos_token = True
    bos = bos_tok.bos_token_id
    assert bos_tok("x")["input_ids"] == [bos] + text_ids(tok, "x")  # the switch took
    for name in ("default", "default-generation", "chatml", "yi"):
        without = get_template(name, tok).encode(TRAIN[:2])
        with_bos = get_template(name, bos_tok).encode(TRAIN[:2])
        assert with_bos.input_ids == [bos] + without.input_ids, name
        assert with_bos.labels == [IGNORE_INDEX] + without.labels, name
    assert get_template("qwen", bos_tok).encode(Q1).input_ids == get_template("qwen", tok).encode(Q1).input_ids


# ---- training labels -------------------------------------------------------------------------------------------
EOS = "<|im_end|>"  # the SmolLM2 tokenizer's eos, what {{EOS}} becomes
LABELLED = {  # per template: what the labels of TRAIN decode to, one string per reply
    "chatml": [R1 + "<|im_end|>", R2 + "<|im_end|>"],
    "qwen": [R1 + "<|im_end|>", R2 + "<|im_end|>"],
    "qwen2_5": [R1 + "<|im_end|>", R2 + "<|im_end|>"],
    "yi": [R1 + "<|im_end|>", R2 + "<|im_end|>"],
    "smollm2": [R1 + "<|im_end|>", R2 + "<|im_end|>"],
    "llama": [f" {R1} {EOS}", f" {R2} {EOS}"],
    "llama3": [R1 + "<|eot_id|>", R2 + "<|eot_id|>"],
    "chatglm3": [R1 + "<|user|>", R2 + "<|user|>"],  # the end token opens the next query
    "default": [R1, R2 + EOS],  # "\n\n" separates rounds; only the last reply ends with eos
}


def test_labels_cover_every_multi_turn_template():
    assert set(LABELLED) == {n for n, t in TEMPLATE_MAPPING.items() if t.support_multi_round} - {"auto"}


@pytest.mark.parametrize("name", LABELLED)
def test_labels_are_the_replies_and_their_end_tokens(family_tok, name):
    encoded = get_template(name, family_tok).encode([system(SYSTEM)] + TRAIN)
    assert len(encoded.labels) == len(encoded.input_ids)
    assert labelled_runs(family_tok, encoded) == LABELLED[name]


def test_labels_with_the_plain_tokenizer(tok):
    encoded = get_template("qwen", tok).encode(TRAIN)
    assert labelled_runs(tok, encoded) == [R1 + "<|im_end|>", R2 + "<|im_end|>"]
    first = next(i for i, x in enumerate(encoded.labels) if x != IGNORE_INDEX)
    assert tok.decode(encoded.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_labels_of_stripped_replies(family_tok):
    # Llama-3 trims replies, so the learned text is the trimmed reply.
    encoded = get_template("llama3", family_tok).encode([user("q"), assistant("  4\n")])
    assert labelled_runs(family_tok, encoded) == ["4<|eot_id|>"]


def test_no_labels_for_a_generation_prompt(tok):
    assert get_template("qwen", tok).encode(Q1).labels is None


# ---- input shapes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen", "llama", "chatglm3"])
def test_history_and_messages_give_the_same_ids(tok, name):
    t = get_template(name, tok)
    via_history = t.encode(Q3, history=[[Q1, R1], [Q2, R2]], system=SYSTEM)
    via_messages = t.encode(CONVERSATIONS["system-multi"])
    assert via_history.input_ids == via_messages.input_ids
    assert t.encode(Q1).input_ids == t.encode([user(Q1)]).input_ids


def test_content_as_text_parts(tok):
    t = get_template("qwen", tok)
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    assert t.encode([user(parts)]).input_ids == t.encode(Q1).input_ids


# ---- truncation ------------------------------------------------------------------------------------------------
def test_truncation_delete_raises(tok):
    n = len(get_template("chatml", tok).encode(Q1).input_ids)
    assert len(get_template("chatml", tok, max_length=n).encode(Q1).input_ids) == n  # fits exactly
    with pytest.raises(ContextLengthError):
        get_template("chatml", tok, max_length=n - 1).encode(Q1)


def test_truncation_left_keeps_the_last_ids(tok):
    full = get_template("chatml", tok).encode(TRAIN)
    cut = get_template("chatml", tok, max_length=7, truncation_strategy="truncation_left").encode(TRAIN)
    assert cut.input_ids == full.input_ids[-7:]
    assert cut.labels == full.labels[-7:]


def test_unknown_truncation_strategy(tok):
    with pytest.raises(ArgumentError, match="truncation_strategy"):
        get_template("chatml", tok, truncation_strategy="right")


# ---- the tokenizer's own template ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["single", "multi", "system-multi", "unicode"])
def test_auto_equals_apply_chat_template(tok, case):
    messages = CONVERSATIONS[case]
    assert get_template("auto", tok).encode(messages).input_ids == ids_of(
        tok.apply_chat_template(messages, add_generation_prompt=True))


def test_auto_labels_find_the_replies(tok):
    # "4" also appears in the query: the label must be the reply, after the assistant header.
    messages = [user("Is 2+2 4 or 5?"), assistant("4"), user("And 2+3?"), assistant("5")]
    encoded = get_template("auto", tok).encode(messages)
    assert encoded.input_ids == ids_of(tok.apply_chat_template(messages))
    assert labelled_runs(tok, encoded) == ["4<|im_end|>", "5<|im_end|>"]
    first = next(i for i, x in enumerate(encoded.labels) if x != IGNORE_INDEX)
    assert tok.decode(encoded.input_ids[:first]).endswith("<|im_start|>assistant\n")


def test_auto_labels_with_a_trimming_template(tok):
    tokenizer = copy.deepcopy(tok)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    tokenizer.chat_template = LLAMA3
    encoded = get_template("auto", tokenizer).encode([user("q"), assistant(" 4\n")])
    assert labelled_runs(tokenizer, encoded) == ["4<|eot_id|>"]
    assert get_template("auto", tokenizer).stop_words == ["<|eot_id|>", tokenizer.eos_token]


# ---- stop words and errors -------------------------------------------------------------------------------------
END_TOKEN = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "qwen2_5": "<|im_end|>", "yi": "<|im_end|>",
             "smollm2": "<|im_end|>", "llama": EOS, "llama3": "<|eot_id|>", "chatglm3": "<|user|>", "default": EOS,
             "default-generation": EOS, "auto": "<|im_end|>"}


@pytest.mark.parametrize("name", sorted(TEMPLATE_MAPPING))
def test_stop_words_hold_the_end_token_and_eos(family_tok, name):
    t = get_template(name, family_tok)
    assert t.stop_words[0] == END_TOKEN[name]
    assert family_tok.eos_token in t.stop_words
    ids = t.stop_token_ids
    assert family_tok.convert_tokens_to_ids(END_TOKEN[name]) in ids and family_tok.eos_token_id in ids


def test_stop_token_ids_skip_words_the_vocab_lacks(tok):
    assert get_template("llama3", tok).stop_words == ["<|eot_id|>", "<|im_end|>"]
    assert get_template("llama3", tok).stop_token_ids == [tok.eos_token_id]


@pytest.mark.parametrize("wrong, hint", [("qwen2.5", "qwen2_5"), ("lama3", "llama3")])
def test_unknown_template_names_close_matches(tok, wrong, hint):
    with pytest.raises(ArgumentError, match=f"Unknown template_type '{wrong}'.*Did you mean:.*{hint}"):
        get_template(wrong, tok)


def test_single_round_template_rejects_history(tok):
    t = get_template("default-generation", tok)
    with pytest.raises(ArgumentError, match="single-round"):
        t.encode(Q2, history=[[Q1, R1]])


def test_system_on_a_template_without_system_goes_in_front_of_the_query(tok):
    """ms-swift and vLLM fold it (Gemma-3's own rule), rather than refusing (issue 15 item 3)."""
    template = get_template("default-generation", tok)
    assert template.encode(Q1, system=SYSTEM).input_ids == template.encode(f"{SYSTEM}\n\n{Q1}").input_ids


def test_get_template_returns_an_independent_copy(tok):
    t = get_template("qwen", tok, default_system="Be short.", max_length=10)
    assert TEMPLATE_MAPPING["qwen"].default_system == "You are a helpful assistant."
    assert TEMPLATE_MAPPING["qwen"].tokenizer is None and TEMPLATE_MAPPING["qwen"].max_length is None
    assert isinstance(t, Template) and t.tokenizer is tok

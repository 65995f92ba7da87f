"""The transformers engine on the real default model: answers, batching, streaming, sampling, LoRA, limits."""
from __future__ import annotations

import pytest

from swiftcli.errors import ContextLengthError, ModelNotFoundError
from swiftcli.protocol import InferRequest, RequestConfig

GREEDY = RequestConfig(max_tokens=48, temperature=0)


def ask(query: str, **kw) -> InferRequest:
    return InferRequest.from_query(query, **kw)


def test_greedy_answer_names_paris(pt_engine):
    [resp] = pt_engine.infer([ask("What is the capital of France?")], GREEDY)
    assert "Paris" in resp.text
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == len(pt_engine.encode(ask("What is the capital of France?")).input_ids)
    assert resp.usage.completion_tokens == len(resp.choices[0].token_ids) > 0


def test_batch_of_mixed_lengths_equals_one_by_one(pt_engine):
    queries = ["Hi", "What is the capital of France?",
               "Write one sentence about the sea, the sky and the mountains of Norway in winter.", "2+2="]
    batched = [r.text for r in pt_engine.infer([ask(q) for q in queries], GREEDY)]
    single = [pt_engine.infer([ask(q)], GREEDY)[0].text for q in queries]
    assert batched == single
    assert len(set(batched)) == len(queries)


@pytest.mark.parametrize("query", ["Tell me about the Eiffel Tower.", "Repeat exactly: 北京是中国的首都，历史悠久。"])
def test_stream_equals_non_stream(pt_engine, query):
    config = RequestConfig(max_tokens=40, temperature=0)
    full = pt_engine.infer([ask(query)], config)[0]
    deltas = list(pt_engine.infer_stream(ask(query), config))
    text = "".join(d.text for d in deltas)
    assert text == full.text
    assert "\ufffd" not in text and all("\ufffd" not in d.text for d in deltas)
    assert deltas[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [d.finish_reason for d in deltas if d.finish_reason] == [full.choices[0].finish_reason]


def test_chinese_stream_is_valid_utf8_piece_by_piece(pt_engine):
    deltas = [d.text for d in pt_engine.infer_stream(ask("Repeat exactly: 春天来了，花开了。"), RequestConfig(max_tokens=30))]
    assert "春天来了，花开了。" in "".join(deltas)
    assert len(deltas) > 3  # really streamed, not one final piece
    for piece in deltas:
        piece.encode("utf-8", errors="strict")
        assert "\ufffd" not in piece


def test_seed_makes_sampling_reproducible(pt_engine):
    config = RequestConfig(max_tokens=24, temperature=1.0, top_p=0.95, seed=1234)
    a = pt_engine.infer([ask("Tell me a short story.")], config)[0].text
    b = pt_engine.infer([ask("Tell me a short story.")], config)[0].text
    c = pt_engine.infer([ask("Tell me a short story.")], config.replace(seed=99))[0].text
    assert a == b
    assert a != c


def test_n_choices_and_length_finish(pt_engine):
    config = RequestConfig(max_tokens=5, temperature=1.0, seed=7, n=2)
    resp = pt_engine.infer([ask("Tell me a story about a dragon.")], config)[0]
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.finish_reason == "length" and len(c.token_ids) == 5 for c in resp.choices)
    assert resp.usage.completion_tokens == 10


def test_stop_word_cuts_the_reply(pt_engine):
    full = pt_engine.infer([ask("What is the capital of France?")], GREEDY)[0].text
    assert "Paris" in full
    cut = pt_engine.infer([ask("What is the capital of France?")], GREEDY.replace(stop=["Paris"]))[0]
    assert cut.text == full[:full.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"


def test_lora_adapter_changes_output_per_request(pt_engine):
    base, lora = pt_engine.infer([ask("What is the capital of France?"),
                                  ask("What is the capital of France?", adapter="my_lora")], GREEDY)
    assert "Paris" in base.text
    assert lora.text != base.text
    alone = pt_engine.infer([ask("What is the capital of France?", adapter="my_lora")], GREEDY)[0]
    assert alone.text == lora.text  # a mixed batch routes each row to its own adapter


def test_unknown_adapter_is_rejected(pt_engine):
    with pytest.raises(ModelNotFoundError, match="unknown adapter"):
        pt_engine.infer([ask("hi", adapter="nope")], GREEDY)


def test_prompt_longer_than_context_is_a_clear_error(pt_engine):
    long_query = "hello " * (pt_engine.info.max_model_len + 10)
    with pytest.raises(ContextLengthError, match=str(pt_engine.info.max_model_len)):
        pt_engine.infer([ask(long_query)], GREEDY)


def test_lora_ckpt_dir_is_served_as_default_lora(lora_dir):
    from swiftcli.arguments import InferArguments

    args = InferArguments(ckpt_dir=lora_dir, infer_backend="pt")
    assert args.adapters == {"default-lora": lora_dir}
    assert args.is_lora_ckpt


# ---- the static KV cache decode path (CUDA graphs on GPU; the same step runs eagerly here) -----------------------
@pytest.fixture(scope="module")
def engines():
    """The default model without adapters: (eager engine, static-cache engine, static-cache engine, 1 token/sync)."""
    from swiftcli.arguments import InferArguments
    from swiftcli.engine import get_engine
    from swiftcli.engine.pt_engine import PtEngine

    eager = get_engine(InferArguments(infer_backend="pt", dtype="fp32", max_batch_size=4))
    assert eager.static is None  # CPU default: the eager path
    static = get_engine(InferArguments(infer_backend="pt", dtype="fp32", max_batch_size=4, enforce_eager=False))
    assert static.static is not None  # what `--enforce_eager false` gives (the default on CUDA)
    assert not static.static.compiled  # torch.compile only with --torch_compile true
    one_per_sync = PtEngine(eager.model, eager.template, eager.info, eager.default_config, max_batch_size=4,
                            static_decode=True, decode_steps=1)
    return eager, static, one_per_sync


def test_torch_compile_flag_reaches_the_static_decoder():
    """`swift infer --infer_backend pt --enforce_eager false --torch_compile true`: the step is compiled on first use."""
    from swiftcli.arguments import InferArguments
    from swiftcli.engine import get_engine

    engine = get_engine(InferArguments(infer_backend="pt", enforce_eager=False, torch_compile=True))
    assert engine.static is not None and engine.static.compiled


MIXED = [("Hi", 8), ("What is the capital of France?", 40), ("2+2=", 30), ("List three fruits.", 21),
         ("Write one sentence about the sea, the sky and the mountains of Norway in winter.", 12),
         ("Tell me about the Eiffel Tower.", 16)]


def _staggered(engine, items, config=GREEDY):
    """Token ids per request; requests join one by one while earlier ones decode (6 rows > max_batch_size 4)."""
    import asyncio

    async def go():
        tasks = []
        for query, max_tokens in items:
            tasks.append(asyncio.create_task(engine.infer_async(ask(query), config.replace(max_tokens=max_tokens))))
            await asyncio.sleep(0.05)
        return [r.choices[0] for r in await asyncio.gather(*tasks)]

    return asyncio.run(go())


def test_static_decode_greedy_equals_eager_token_for_token(engines):
    eager, static, static_one = engines
    assert static.static is not None and static.decode_steps > 1
    reference = [(c.token_ids, c.finish_reason) for c in _staggered(eager, MIXED)]
    assert {f for _, f in reference} == {"stop", "length"}  # rows leave by a stop token and by length
    for engine in (static, static_one):
        assert [(c.token_ids, c.finish_reason) for c in _staggered(engine, MIXED)] == reference
    query, max_tokens = MIXED[2]  # alone: a batch of one
    assert static.infer([ask(query)], GREEDY.replace(max_tokens=max_tokens))[0].choices[0].token_ids == reference[2][0]


def test_static_decode_sampling_penalties_and_stops_equal_eager(engines):
    eager, static, _ = engines
    for config in (RequestConfig(max_tokens=20, temperature=0.8, top_p=0.9, seed=5),
                   RequestConfig(max_tokens=20, temperature=0, repetition_penalty=1.3),
                   RequestConfig(max_tokens=20, temperature=0, logprobs=True, top_logprobs=2),
                   GREEDY.replace(stop=["Paris"])):
        for query in ("What is the capital of France?", "Tell me a short story."):
            a, b = eager.infer([ask(query)], config)[0], static.infer([ask(query)], config)[0]
            assert (b.text, b.choices[0].finish_reason) == (a.text, a.choices[0].finish_reason), config
            if config.logprobs:
                assert [lp.token for lp in b.choices[0].logprobs] == [lp.token for lp in a.choices[0].logprobs]


def test_static_decode_streams_the_same_text(engines):
    eager, static, _ = engines
    full = eager.infer([ask("Tell me about the Eiffel Tower.")], RequestConfig(max_tokens=30, temperature=0))[0]
    deltas = list(static.infer_stream(ask("Tell me about the Eiffel Tower."), RequestConfig(max_tokens=30,
                                                                                          temperature=0)))
    assert "".join(d.text for d in deltas) == full.text
    assert deltas[-1].usage.completion_tokens == full.usage.completion_tokens


def test_static_cache_grows_past_its_first_length(engines):
    """A prompt just under the first cache length (256 positions): the slots move to a larger cache mid-reply."""
    eager, static, _ = engines
    query = "Repeat these words: " + " ".join(["apple"] * 215)
    prompt = len(eager.encode(ask(query)).input_ids)
    config = RequestConfig(max_tokens=24, temperature=0, ignore_eos=True)
    assert prompt < 256 < prompt + config.max_tokens
    a = eager.infer([ask(query)], config)[0].choices[0].token_ids
    b = static.infer([ask(query)], config)[0].choices[0].token_ids
    assert static.static.length >= 512
    assert b == a


def test_lora_engine_keeps_the_eager_path(pt_engine):
    assert pt_engine.static is None


def test_a_decode_step_writes_into_the_cache_in_place():
    """The eager path's cache layer (pt_batch.PreallocatedLayer) keeps room ahead: a decode step writes its token
    into the same buffer (no copy of the whole cache), and after the batch code replaces its tensors (rows leaving,
    rows joining) it holds exactly what transformers' DynamicLayer would."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from swiftcli.engine.pt_batch import PreallocatedLayer

    ours, theirs = PreallocatedLayer(), DynamicLayer()
    steps = [torch.randn(3, 2, 5, 4)] + [torch.randn(3, 2, 1, 4) for _ in range(4)]
    buffers = set()
    for i, new in enumerate(steps):
        if i == 3:  # a row leaves: the batch code selects the others' rows
            for layer in (ours, theirs):
                layer.batch_select_indices(torch.tensor([0, 2]))
        if i >= 3:
            new = new[:2]
        keys, values = ours.update(new, -new)
        expected_keys, expected_values = theirs.update(new, -new)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
        buffers.add(keys.untyped_storage().data_ptr())
    assert len(buffers) == 2  # one buffer from the prefill, one after the rows changed: no copy per step

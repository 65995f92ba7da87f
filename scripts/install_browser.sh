#!/usr/bin/env bash
# What tests/test_app_ui.py needs beyond scripts/install.sh: Debian's Chromium and Playwright for Python to drive it.
# Playwright cannot download its own browser here, so the test launches this chromium (executable_path).
# Idempotent; needs root for apt-get (as on the developers' machines and in CI).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The interpreter install.sh used: $PYTHON, else `python` (a virtualenv's), else `python3`.
py="${PYTHON:-$(command -v python || command -v python3)}"
"$py" -m pip install --disable-pip-version-check --root-user-action=ignore -q playwright==1.65.2

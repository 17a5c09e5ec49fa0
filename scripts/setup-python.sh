#!/usr/bin/env bash
# Creates .venv with the pinned Python tools (model script, onnxruntime benchmark anchor,
# the Stellar SDK used as an independent check). Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; sys.exit(0 if open("requirements.txt").read() == open(".venv/.requirements.installed").read() else 1)' 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/.requirements.installed
fi
echo ".venv ready: $(.venv/bin/python --version)"

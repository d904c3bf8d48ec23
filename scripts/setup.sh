#!/usr/bin/env bash
# Create .venv and install rddn-inspector with everything the demo, training and tests need.
# Idempotent: a second run only checks. torch/torchvision come from this machine's wheel cache (CPU work here).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rddn-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e '.[train,dev,postgres,opcua,web,openvino]'
  touch "$stamp"
fi

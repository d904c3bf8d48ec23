#!/usr/bin/env bash
# Set up (if needed) and run the inspection daemon on a demo station: synthetic camera frames, SQLite,
# a loopback ZeroMQ alarm bus with a live alarm tail, the CPU (ONNX Runtime) backend. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/inspector demo "$@"

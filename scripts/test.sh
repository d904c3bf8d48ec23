#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# --max-worker-restart=0: a worker that dies (a native crash) fails the run at once, naming the test it was
# running. pytest-xdist 3.8 with --dist loadfile otherwise replaces the worker and can then wait forever
# (pytest-xdist issues #784, #1378): CI would see a 90-minute timeout instead of the crash.
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --max-worker-restart=0 "$@"

#!/usr/bin/env bash
# The test command: set up .venv (see .ci/venv.sh) and run the fast suite on CPU (a few minutes).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k evaluate`. Tests marked `slow` (model
# quality: tests/engine/test_overfit.py) are left out unless the arguments choose markers with -m:
# `bash tests/run.sh -m slow` runs only them, `bash tests/run.sh -m ""` everything. Tests run in
# parallel (pytest-xdist), one process per core, at least 2; WSIS_TEST_WORKERS=0 runs them in one
# (needed for options such as --pdb or -s).
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/venv.sh
markers=(-m "not slow")
for arg in "$@"; do
    if [[ $arg == -m* ]]; then markers=(); fi
done
workers=${WSIS_TEST_WORKERS:-$(python -c "import os; print(max(2, min(8, os.cpu_count() or 1)))")}
python -m pytest -q -n "$workers" --dist loadfile ${markers[@]+"${markers[@]}"} "$@"

#!/usr/bin/env bash
# The test command: set up .venv (see .ci/venv.sh) and run the whole suite on CPU.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k evaluate`.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/venv.sh
python -m pytest -q "$@"

# Sourced by examples/quickstart.sh and tests/run.sh: make (or reuse) the virtual environment
# and install wsis into it with its test extras, then put it first on PATH.
# First run: about a minute (torch/torchvision wheels, ~5 GB). WSIS_VENV picks another folder.
WSIS_VENV=${WSIS_VENV:-.venv}
if [ ! -x "$WSIS_VENV/bin/python" ]; then
    echo "creating virtual environment $WSIS_VENV" >&2
    python3 -m venv "$WSIS_VENV"
fi
echo "installing wsis into $WSIS_VENV (first time: about a minute)" >&2
"$WSIS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
export PATH="$(cd "$WSIS_VENV" && pwd)/bin:$PATH"
"$WSIS_VENV/bin/python" - <<'PY'
import torch, torchvision
from torchvision.ops import nms
boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
assert keep == [0, 2], keep
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: nms ok, "
      f"cuda {'available' if torch.cuda.is_available() else 'not available (CPU)'}", flush=True)
PY

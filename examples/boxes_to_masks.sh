#!/usr/bin/env bash
# Boxes -> instance masks (the hybrid-networks recipe): synth -> weaken to boxes -> GrabCut
# (ellipse where GrabCut's mask is invalid) -> evaluate against the true masks -> show.
#   bash examples/boxes_to_masks.sh [WORK_DIR]     (default: demo/boxes)
# Expects `wsis` on PATH (run examples/quickstart.sh once, then `source .venv/bin/activate`).
set -euo pipefail
W=${1:-demo/boxes}

wsis data synth --out "$W" --n 40 --size 256 --seed 0 --overwrite
wsis data weaken "$W/gt.json" --to box --out "$W/boxes.json"
wsis pseudolabel grabcut "$W/boxes.json" --images "$W/images" --out "$W/pseudo.json" --seed 0
wsis evaluate "$W/gt.json" "$W/pseudo.json" --per-class --out "$W/eval.json"
wsis show "$W/pseudo.json" --images "$W/images" --out "$W/show" --max 16
echo "pseudo-labels: $W/pseudo.json, scores: $W/eval.json, pictures: $W/show/contact_sheet.png" >&2

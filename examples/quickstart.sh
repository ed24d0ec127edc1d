#!/usr/bin/env bash
# Quickstart: set up .venv, then run the main job on a synthetic demo set (no downloads):
# boxes -> instance masks by GrabCut -> evaluation against the true masks -> pictures -> cost.
#   bash examples/quickstart.sh [DEMO_DIR]        (default: demo/)
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/venv.sh
DEMO=${1:-demo}
step() { printf '\n== %s\n' "$*" >&2; }

step "1. synthesise 60 images of textured shapes with full masks (the ground truth)"
wsis data synth --out "$DEMO" --n 60 --size 256 --seed 0 --overwrite

step "2. keep only what a cheap annotator gives: one box per object"
wsis data weaken "$DEMO/gt.json" --to box --out "$DEMO/boxes.json"

step "3. boxes -> masks: GrabCut in each box, the inscribed ellipse where GrabCut's mask is invalid"
wsis pseudolabel grabcut "$DEMO/boxes.json" --images "$DEMO/images" --out "$DEMO/pseudo.json" --seed 0

step "4. how good are the pseudo-masks? (mAP^r, AP, AP_S/AP_L, ABO against the true masks)"
wsis evaluate "$DEMO/gt.json" "$DEMO/pseudo.json" --out "$DEMO/eval.json"

step "5. look at them: overlays and a contact sheet (fallback ellipses hatched)"
wsis show "$DEMO/pseudo.json" --images "$DEMO/images" --out "$DEMO/show" --max 16

step "6. what the labels cost (Pascal VOC cost model): 60 images with boxes vs with masks"
wsis budget --strong 0 --weak 60 --weak-type box
wsis budget --strong 60 --weak 0

printf '\ndone: %s/pseudo.json, %s/eval.json, %s/show/contact_sheet.png\n' "$DEMO" "$DEMO" "$DEMO" >&2

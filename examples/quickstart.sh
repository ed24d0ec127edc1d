#!/usr/bin/env bash
# Quickstart: set up .venv, then run the main job on a synthetic demo set (no downloads).
#   bash examples/quickstart.sh [DEMO_DIR]        (default: demo/)
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/venv.sh
DEMO=${1:-demo}
step() { printf '\n== %s\n' "$*" >&2; }

step "1. synthesise 60 images of textured shapes with full masks"
wsis data synth --out "$DEMO" --n 60 --size 256 --seed 0

step "2. split: 40 train images, 20 validation images"
wsis data subset "$DEMO/gt.json" --n 40 --seed 0 --out "$DEMO/train.json"
wsis data subset "$DEMO/gt.json" --ids "$DEMO/train.json" --complement --out "$DEMO/val.json"

step "3. what annotators would have given us instead of masks"
wsis data weaken "$DEMO/train.json" --to box --out "$DEMO/train_box.json"
wsis data weaken "$DEMO/train.json" --to ilc --out "$DEMO/train_ilc.json"

step "4. evaluate: the box labels scored as box predictions against the truth (a sanity check: 100)"
wsis evaluate "$DEMO/train.json" "$DEMO/train_box.json" --iou-thrs 0.5,0.75

step "5. what the labels cost (Pascal VOC cost model): 40 box-labelled images vs 40 with masks"
wsis budget --strong 0 --weak 40 --weak-type box
wsis budget --strong 40 --weak 0

printf '\ndone: outputs in %s/\n' "$DEMO" >&2

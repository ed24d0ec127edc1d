#!/usr/bin/env bash
# Image-level labels with counts -> instance masks (PRM + CCGR): synth -> weaken to IL+C ->
# train the peak-stimulated classifier -> one instance per peak (peak response maps, GrabCut)
# with the class score maps saved -> CCGR box refinement on those maps -> evaluate -> show.
#   bash examples/image_labels_to_masks.sh [WORK_DIR]     (default: demo/image_labels)
# Expects `wsis` on PATH (run examples/quickstart.sh once, then `source .venv/bin/activate`).
# CPU-sized: a ResNet-18 from scratch on 150 images of 128 px, a few minutes on 2 cores.
set -euo pipefail
W=${1:-demo/image_labels}

wsis data synth --out "$W" --n 150 --size 128 --seed 1 --overwrite
wsis data weaken "$W/gt.json" --to ilc --out "$W/ilc.json"
wsis train classifier "$W/ilc.json" --images "$W/images" --out "$W/cls.pt" \
    --backbone resnet18 --weights none --size 128 --epochs 12 --batch-size 16 --lr 0.05 --seed 0 --overwrite
wsis pseudolabel prm "$W/ilc.json" --images "$W/images" --model "$W/cls.pt" \
    --save-maps "$W/maps" --out "$W/prm.json" --seed 0
wsis pseudolabel ccgr "$W/prm.json" --maps "$W/maps" --out "$W/ccgr.json" --seed 0
for step in prm ccgr; do
    echo "== $step ==" >&2
    wsis evaluate "$W/gt.json" "$W/$step.json" --out "$W/eval_$step.json"
done
wsis show "$W/prm.json" --images "$W/images" --out "$W/show" --max 16
echo "pseudo-labels: $W/prm.json and $W/ccgr.json, scores: $W/eval_*.json, pictures: $W/show/contact_sheet.png" >&2

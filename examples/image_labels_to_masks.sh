#!/usr/bin/env bash
# Image-level labels with counts -> instance masks, the whole CCGR system (issue 14):
#   classifier -> PRM peaks and masks -> SS branch trained on them (class-level labels) -> its maps
#   -> bags of proposals per peak (Eq. 4) -> MIL branch picks one box per peak -> CCGR refines it
#   on the SS maps -> IS branch (Mask R-CNN) -> round 2: the IS branch labels the training images
#   (its masks train the SS branch again, its boxes seed the bags) -> ... -> the last IS branch.
# Every stage's pseudo-labels are scored against the ground truth (a demo has it; real data would not).
#   bash examples/image_labels_to_masks.sh [WORK_DIR] [ROUNDS]     (defaults: demo/image_labels, 2)
# Expects `wsis` on PATH (run examples/quickstart.sh once, then `source .venv/bin/activate`).
# CPU-sized: ResNet-18s from scratch on 80 images of 128 px, about half an hour on 2 cores.
set -euo pipefail
W=${1:-demo/image_labels}
ROUNDS=${2:-2}
[ "$ROUNDS" -ge 1 ] || { echo "ROUNDS must be at least 1" >&2; exit 2; }
NET=(--backbone resnet18 --seed 0 --overwrite)
MRCNN=(--min-size 128 --max-size 128 --fpn-channels 64 --head-channels 256 --batch-size 4 --lr 0.02
       --warmup-iters 20 --keep-epochs 0 --epochs 10)

score() {  # score STAGE FILE: the pseudo-labels' mask mAP@0.5 against the ground truth, on stderr
    wsis evaluate "$W/gt.json" "$2" --out "$W/eval_$1.json" --quiet
    python -c "import json,sys; e=json.load(open(sys.argv[1])); print(f'== {sys.argv[2]}: pseudo-label mAP@0.5 {e[\"mAP\"][\"0.5\"]:.3f}', file=sys.stderr)" "$W/eval_$1.json" "$1"
}

wsis data synth --out "$W" --n 80 --size 128 --seed 1 --overwrite
wsis data weaken "$W/gt.json" --to ilc --out "$W/ilc.json"
wsis train classifier "$W/ilc.json" --images "$W/images" --out "$W/cls.pt" "${NET[@]}" --weights none \
    --size 128 --epochs 12 --batch-size 16 --lr 0.05
wsis pseudolabel prm "$W/ilc.json" --images "$W/images" --model "$W/cls.pt" --out "$W/prm.json" --seed 0
score prm "$W/prm.json"

SEEDS="$W/prm.json"
SEG_INIT=none
for r in $(seq 1 "$ROUNDS"); do
    R="$W/round$r"; mkdir -p "$R"
    wsis train segmenter "$SEEDS" --labels "$W/ilc.json" --images "$W/images" --out "$R/seg.pt" "${NET[@]}" \
        --weights "$SEG_INIT" --size 128
    wsis predict-maps "$R/seg.pt" --images "$W/images" --dataset "$W/ilc.json" --out "$R/maps" --overwrite
    wsis pseudolabel bags "$SEEDS" --images "$W/images" --maps "$R/maps" --out "$R/bags.json" --seed 0
    wsis train mil "$R/bags.json" --images "$W/images" --out "$R/mil.pt" "${NET[@]}" --weights "$R/seg.pt" --size 128
    wsis pseudolabel mil "$R/bags.json" --images "$W/images" --model "$R/mil.pt" --out "$R/mil.json"
    wsis pseudolabel ccgr "$R/mil.json" --maps "$R/maps" --labels "$W/ilc.json" --out "$R/ccgr.json" --seed 0
    score "round$r-mil-ccgr" "$R/ccgr.json"
    wsis train maskrcnn "$R/ccgr.json" --images "$W/images" --out "$R/run" "${NET[@]}" --weights none "${MRCNN[@]}"
    if [ "$r" -lt "$ROUNDS" ]; then  # the IS branch labels the training images: the next round's seeds
        wsis pseudolabel net "$W/ilc.json" --images "$W/images" --model "$R/run" --out "$R/is.json"
        score "round$r-is" "$R/is.json"
        SEEDS="$R/is.json"
        SEG_INIT="$R/seg.pt"
    fi
done
wsis show "$W/round$ROUNDS/ccgr.json" --images "$W/images" --out "$W/show" --max 16
echo "final model: $W/round$ROUNDS/run, pseudo-labels: $W/round*/ccgr.json, scores: $W/eval_*.json," \
     "pictures: $W/show/contact_sheet.png" >&2

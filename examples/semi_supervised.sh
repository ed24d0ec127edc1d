#!/usr/bin/env bash
# A few strong masks + many weak labels (mask-guided sample selection, BASIS):
#   synth -> N random strong images, the rest an IL+C pool -> train an annotation network with the
#   IoU head -> predict each pool image's mask quality (score-iou) -> send the S images closest to
#   beta = 0.5 to "annotators" (here: their ground truth) -> retrain on the larger strong set ->
#   pseudo-label the remaining pool (pseudolabel net) -> fine-tune on strong + pseudo -> evaluate on a
#   held-out test set against the strong-only model -> what the labels cost (budget).
#   bash examples/semi_supervised.sh [WORK_DIR]     (default: demo/semi_supervised)
# Expects `wsis` on PATH (run examples/quickstart.sh once, then `source .venv/bin/activate`).
# CPU-sized: tiny ResNet-18 Mask R-CNNs from scratch on 128-px images; sizes via N, S, POOL, EPOCHS.
set -euo pipefail
W=${1:-demo/semi_supervised}
POOL=${POOL:-80}     # images in the training pool
N=${N:-16}           # strong (fully annotated) images to start with
S=${S:-16}           # pool images sent to annotators
EPOCHS=${EPOCHS:-15}
MODEL=(--backbone resnet18 --weights none --min-size 128 --max-size 128 --fpn-channels 64 --head-channels 256
       --batch-size 4 --lr 0.02 --warmup-iters 20 --keep-epochs 0 --seed 0 --overwrite)

wsis data synth --out "$W/data" --n "$POOL" --size 128 --classes 3 --seed 11 --overwrite
wsis data synth --out "$W/test" --n 30 --size 128 --classes 3 --seed 12 --overwrite
IM="$W/data/images"

# 1. N strong images; the rest of the pool keeps image-level labels with counts only
wsis data subset "$W/data/gt.json" --n "$N" --seed 0 --out "$W/strong0.json"
wsis data subset "$W/data/gt.json" --ids "$W/strong0.json" --complement --out "$W/pool_gt.json"
wsis data weaken "$W/pool_gt.json" --to ilc --out "$W/pool.json"

# 2. the annotation network, with the IoU branch trained after segmentation
wsis train maskrcnn "$W/strong0.json" --images "$IM" --out "$W/run0" "${MODEL[@]}" --epochs "$EPOCHS" \
    --iou-head --iou-epochs 4

# 3. predicted mask quality of every pool image (its instances: the k best per class, as
#    pseudolabel net keeps them), and the S images closest to beta = 0.5
wsis score-iou --model "$W/run0" --images "$IM" --dataset "$W/pool.json" --out "$W/pool_scores.json"
wsis select "$W/pool_scores.json" --n "$S" --beta 0.5 --out "$W/selected.json"

# 4. annotators draw the selected images' masks (simulated with the ground truth)
wsis data subset "$W/pool_gt.json" --ids "$W/selected.json" --out "$W/annotated.json"
wsis data merge "$W/strong0.json" "$W/annotated.json" --out "$W/strong1.json"
wsis data subset "$W/pool.json" --ids "$W/selected.json" --complement --out "$W/weak.json"

# 5. retrain on the larger strong set, pseudo-label the weak rest, train on strong + pseudo
wsis train maskrcnn "$W/strong1.json" --images "$IM" --out "$W/run1" "${MODEL[@]}" --epochs "$EPOCHS" \
    --iou-head --iou-epochs 4
#    pseudo-masks the IoU head doubts (predicted IoU < 0.5) become ignore regions (--only-valid), and the
#    final model starts from the annotation network's weights (on the supervision ladder, a model
#    trained from scratch on strong + pseudo scored below the annotation network itself)
wsis pseudolabel net "$W/weak.json" --images "$IM" --model "$W/run1" --min-iou 0.5 --out "$W/pseudo.json"
wsis data merge "$W/strong1.json" "$W/pseudo.json" --renumber --out "$W/final_train.json"
wsis train maskrcnn "$W/final_train.json" --images "$IM" --out "$W/run2" "${MODEL[@]}" --epochs "$EPOCHS" \
    --only-valid --weights "$W/run1/best.pt"

# 6. held-out test set: strong-only model vs strong + pseudo; pseudo-label quality on the pool
for run in run1 run2; do
    wsis predict "$W/$run" --images "$W/test/images" --dataset "$W/test/gt.json" --out "$W/test_$run.json"
    echo "== test set, $run ($([ $run = run1 ] && echo "$((N + S)) strong" || echo "$((N + S)) strong + pseudo")) ==" >&2
    wsis evaluate "$W/test/gt.json" "$W/test_$run.json" --out "$W/eval_$run.json"
done
echo "== pseudo-labels of the weak pool against its ground truth ==" >&2
wsis data subset "$W/pool_gt.json" --ids "$W/weak.json" --out "$W/weak_gt.json"
wsis evaluate "$W/weak_gt.json" "$W/pseudo.json" --out "$W/eval_pseudo.json"

# 7. what these labels cost
wsis budget --strong "$((N + S))" --weak "$((POOL - N - S))" --weak-type ilc --classes 3
echo "runs: $W/run{0,1,2}, scores: $W/eval_*.json" >&2

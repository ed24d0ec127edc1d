#!/usr/bin/env bash
# Run every example pipeline (quickstart without its venv step; semi_supervised at a small size)
# in WORK_DIR and print one "sha256  path" line per output file, sorted: the record that a
# refactor left every output byte-identical (run it before and after, then diff the two lists).
#   bash benchmarks/example_digests.sh WORK_DIR > digests.txt
# Expects `wsis` on PATH. Run logs go to WORK_DIR/*.log; timings (seconds) and machine-dependent
# files (run folders' metrics.jsonl, which hold durations) are left out of the list.
set -euo pipefail
W=${1:?usage: example_digests.sh WORK_DIR}
HERE="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$W"
W="$(cd "$W" && pwd)"

# quickstart.sh minus its first lines (cd to the repo, source the venv): the same pipeline
sed -e '/^cd "\$(dirname/d' -e '/^source .ci\/venv.sh/d' "$HERE/examples/quickstart.sh" > "$W/quickstart_body.sh"
(cd "$W" && bash quickstart_body.sh "$W/quickstart" > "$W/quickstart.stdout" 2> "$W/quickstart.log")
bash "$HERE/examples/boxes_to_masks.sh" "$W/boxes" > "$W/boxes.stdout" 2> "$W/boxes.log"
bash "$HERE/examples/image_labels_to_masks.sh" "$W/image_labels" > "$W/image_labels.stdout" 2> "$W/image_labels.log"
POOL=24 N=8 S=4 EPOCHS=2 bash "$HERE/examples/semi_supervised.sh" "$W/semi" > "$W/semi.stdout" 2> "$W/semi.log"

cd "$W"
find . -type f ! -name '*.log' ! -name 'quickstart_body.sh' ! -name 'metrics.jsonl' -print0 \
    | sort -z | xargs -0 sha256sum

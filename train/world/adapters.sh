#!/usr/bin/env bash
# Train the shapes world's adapter checkpoints with `gatebench train` on the FROZEN world base.
#   bash train/world/adapters.sh          (after build_assets.sh and python -m train.world.base)
# Series: good (gligen init, the shipped evaluation series), zero-out (same recipe, for the
# init comparison), legacy (gate 3.0 + random to_out: the user's collapse) and deadlock (both 0).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-assets-build}
BASE=${BASE:-$OUT/base/model}
DATA=${DATA:-$OUT/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
common=(--mixed-data "$DATA/train.jsonl" --image-dir "$DATA/images/train" --base-model "$BASE"
        --batch-size "${BATCH:-32}" --min-area 0 --min-side 0 --scale-min 0.5 --scale-max 1.0
        --phrase-dropout 0.05 --caption-dropout 0.1 --log-gate-stats --log-tensorboard --seed 0 --null-slot)
run() { $PY -m train "${common[@]}" "$@"; }

# good: up to 4000 steps (625 per epoch), a checkpoint every 250 steps (the metrics-vs-step series)
run --output-dir "$OUT/adapters/good" --init gligen --lr 2e-3 --warmup-steps 50 \
    --epochs 10 --max-steps "${GOOD_STEPS:-4000}" --save-every 250 --log-every 25 &
# zero-out: the user's current init, same recipe, shorter (gate trajectory comparison)
run --output-dir "$OUT/adapters/zero-out" --init zero-out --lr 2e-3 --warmup-steps 50 \
    --max-steps "${ZERO_STEPS:-500}" --save-every 250 --log-every 25 &
wait
# legacy: gate 3.0 with a random to_out; a larger lr shows in minutes what took the user epochs
run --output-dir "$OUT/adapters/legacy" --init legacy --lr 5e-3 --warmup-steps 10 \
    --max-steps "${LEGACY_STEPS:-400}" --save-every 100 --log-every 20
# deadlock: gate 0 and to_out 0 never move, however long it trains
run --output-dir "$OUT/adapters/deadlock" --init deadlock --lr 2e-3 --max-steps 50 \
    --save-every 50 --log-every 10

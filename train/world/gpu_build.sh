#!/usr/bin/env bash
# One prepared script for a lent GPU (see ../../README.md "The shapes world"): rebuilds the
# world's diffusion assets with far more compute than a 2-core CPU allows, then runs the demo.
#   OUT=/tmp/world bash train/world/gpu_build.sh      (from the repository root, inside the venv)
# Data (40 s) is regenerated from its seeds; detector and CLIP are reused from the repository.
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:-/tmp/world}
ASSETS=${ASSETS:-gatebench/world/assets}
BASE_MIN=${BASE_MIN:-6}
$PY -m gatebench.train.world.data --out "$OUT/data" --yolo "$OUT/yolo"
$PY -m gatebench.train.world.base --data "$OUT/data" --out "$OUT/base" --device cuda --batch-size 128 \
    --lr 2e-3 --threads 8 --minutes "$BASE_MIN" --save-every 500
OUT="$OUT" BASE="$OUT/base/model" DATA="$OUT/data" GOOD_STEPS=${GOOD_STEPS:-3000} \
    GLIGEN_STEPS=${GLIGEN_STEPS:-3000} LEGACY_STEPS=${LEGACY_STEPS:-600} \
    BATCH=${BATCH:-128} PY="$PY" bash train/world/adapters.sh
rm -rf "$ASSETS/base" "$ASSETS/adapters"
cp -r "$OUT/base/model" "$ASSETS/base"
OUT="$OUT" ASSETS="$ASSETS" SERIES="good:500,1000,2000,3000 gligen:1000,3000 legacy:200,400,600 deadlock:50" \
    bash train/world/ship_adapters.sh
$PY -m gatebench demo --out "$OUT/demo"

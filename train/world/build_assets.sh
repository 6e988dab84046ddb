#!/usr/bin/env bash
# Rebuild every asset of the embedded shapes world from nothing (no downloads, CPU only).
#
#   bash train/world/build_assets.sh            # from the repository root
#   OUT=/tmp/world PY=python bash train/world/build_assets.sh
#
# Outputs: $OUT/data (layout JSONL + PNGs), $OUT/yolo (ultralytics dataset), $OUT/detector and
# $OUT/clip (run directories, resumable: re-run this script after an interruption), and the
# shipped files in $ASSETS: world_yolo.pt, world_clip.safetensors, world_clip.json.
# Seeds: data splits train 1001 / val 2002 / test 3003 (gatebench.world.shapes.DEFAULT_SPLITS),
# detector seed 0, CLIP seed 0. Measured wall times: train/world/README.md.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-assets-build}
ASSETS=${ASSETS:-gatebench/world/assets}
NICE=${NICE:-nice -n 10}
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$ASSETS"

# 1. data: 20000 / 1000 / 500 images, 32x32 (about 1 min)
if [ ! -f "$OUT/data/manifest.json" ]; then
  $NICE $PY -m gatebench.train.world.data --out "$OUT/data" --yolo "$OUT/yolo"
fi

# 2. detector: YOLOv8 at depth 0.33 / width 0.125 (yolov8n depth, half its width), imgsz 96,
#    10 epochs, batch 64, AdamW lr 0.002, 1 CPU thread; then the ceiling check on val GT images
#    (share of GT boxes matched one-to-one, same class, IoU > 0.5; bar >= 0.95).
$NICE $PY -m gatebench.train.world.detector train --data "$OUT/yolo/data.yaml" --run-dir "$OUT/detector" \
  --scale n --depth 0.33 --width 0.125 --imgsz 96 --epochs 10 --batch 64 --seed 0 \
  --threads 1 --workers 0 --final "$ASSETS/world_yolo.pt" --eval-dataset "$OUT/data"
$NICE $PY -m gatebench.train.world.detector eval --weights "$ASSETS/world_yolo.pt" --dataset "$OUT/data" \
  --split test --imgsz 96 --out "$OUT/detector/eval_test.json"

# 3. CLIP: open_clip CLIP (ViT 32px / patch 4 / width 128 / 4 layers; text width 128 / 2 layers,
#    world word tokenizer, context 16; embed 128), 10 epochs, batch 128, AdamW lr 1e-3, seed 0,
#    English + Chinese captions; fp16 safetensors + JSON config.
$NICE $PY -m gatebench.train.world.clip train --dataset "$OUT/data" --run-dir "$OUT/clip" --epochs 10 \
  --batch 128 --lr 1e-3 --seed 0 --threads 1 \
  --weights "$ASSETS/world_clip.safetensors" --config "$ASSETS/world_clip.json"

# 4. base diffusion model: 3000 steps at batch 32, lr 1e-3, seed 0 (53 min on one thread); the
#    EMA weights ship in fp16. Resumable: rerun this script and base.py continues from
#    $OUT/base/state.pt (automatic, no flag).
if [ ! -f "$ASSETS/base/model_index.json" ] || [ -n "${REBUILD_BASE:-}" ]; then
  $NICE $PY -m gatebench.train.world.base --data "$OUT/data" --out "$OUT/base" --max-steps 3000 \
    --minutes 600 --threads 1 --seed 0
  rm -rf "$ASSETS/base" && cp -r "$OUT/base/model" "$ASSETS/base"
fi

# 5. the test split the demo evaluates (layouts + ground-truth images: ceiling and FID reference)
mkdir -p "$ASSETS/data/images"
cp "$OUT/data/test.jsonl" "$ASSETS/data/test.jsonl"
rm -rf "$ASSETS/data/images/test" && cp -r "$OUT/data/images/test" "$ASSETS/data/images/test"

# 6. adapter series on the FROZEN shipped base (good + gligen in parallel ~40 min, legacy 3.4 min,
#    deadlock 25 s), then copied in as {series}_step_N.pt
OUT="$OUT" BASE="$ASSETS/base" DATA="$OUT/data" PY="$PY" bash train/world/adapters.sh
OUT="$OUT" ASSETS="$ASSETS" bash train/world/ship_adapters.sh

ls -l "$ASSETS"

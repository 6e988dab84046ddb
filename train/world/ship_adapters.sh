#!/usr/bin/env bash
# Copy trained adapter series into the shipped assets as {series}_step_{N}.pt + train.log
# (the demo evaluates the highest step of good / legacy / deadlock; gligen is gates-only).
#   OUT=assets-build bash train/world/ship_adapters.sh
#   SERIES="good:500,1000,2000,3000,4000 gligen:1000,3000 legacy:100,200,300,400 deadlock:50"
set -euo pipefail
OUT=${OUT:-assets-build}
ASSETS=${ASSETS:-gatebench/world/assets}
SERIES=${SERIES:-"good:500,1000,2000,3000,4000 gligen:1000,3000 legacy:100,200,300,400 deadlock:50"}
for entry in $SERIES; do
  name=${entry%%:*}
  src="$OUT/adapters/$name"
  dst="$ASSETS/adapters/$name"
  rm -rf "$dst" && mkdir -p "$dst"
  IFS=, read -ra steps <<< "${entry#*:}"
  for step in "${steps[@]}"; do
    cp "$src/step_$step.pt" "$dst/${name}_step_$step.pt"
  done
  cp "$src/train.log" "$dst/train.log"
  echo "shipped $name: ${steps[*]}"
done
du -sh "$ASSETS"

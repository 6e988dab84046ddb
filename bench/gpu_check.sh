#!/usr/bin/env bash
# The prepared GPU check of issue 19: one call on a GPU machine that sees only this repository and
# has no network, about 8 minutes at most (GPU_CHECK_BUDGET seconds, default 480).
#
# 1. Here, once (a machine with the package index; the venv's versions are pinned):
#        bash bench/gpu_check.sh --fetch-wheels
#    fills bench/out/wheels/ (git-ignored, ~11 MB) with the packages a GPU image lacks: diffusers,
#    ultralytics, ultralytics-thop, open_clip_torch, ftfy, wcwidth, faster-coco-eval, built for
#    CPython 3.12 on manylinux x86_64 (GPU_PYTHON_VERSION to change it). Their other needs (torch,
#    transformers, timm, scipy, ...) are on the image.
# 2. There, from the repository root, with OUT set to the folder whose files come back:
#        bash bench/gpu_check.sh
#    (the device tool: command "bash bench/gpu_check.sh", carry ["bench/out/wheels"],
#    timeout_s 600). It installs the wheels offline into /tmp/gatebench-site, then runs, each under
#    its own time cap and the overall deadline (a step that would not fit is skipped):
#      adapter    bench/adapter_bench.py --device cuda --size kolors  -> $OUT/adapter_bench_kolors.json
#      sd15       bench/generation_bench.py --device cuda --size sd15 -> $OUT/generation_bench_sd15.json
#      pytest-gpu python -m pytest -m gpu
#      demo       python -m gatebench demo --device cuda (the shapes world) -> $OUT/demo_results.json
#    and writes $OUT/log.txt (everything printed) and $OUT/summary.json (each step's exit code and
#    seconds). Exit 0 when every step ran and exited 0 (the benches report missed timing targets
#    as FAIL rows in their JSON but exit 0), 1 when a step failed or was skipped, 2 on bad setup.
#
# Also: --plan (print the steps and caps, run nothing), --help. GPU_CHECK_ALLOW_CPU=1 lets the
# setup pass without CUDA (a check of this script's own flow: the steps then fail fast).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
WHEELS=${GPU_CHECK_WHEELS:-bench/out/wheels}
SITE=${GPU_CHECK_SITE:-/tmp/gatebench-site}
BUDGET=${GPU_CHECK_BUDGET:-480}
RESERVE=15          # seconds kept back for the summary after the last step
MIN_STEP=30         # a step with less time than this left is skipped
CARRIED=(diffusers ultralytics ultralytics-thop open_clip_torch ftfy wcwidth faster-coco-eval)
MODULES=(diffusers ultralytics thop open_clip ftfy wcwidth faster_coco_eval)

# name | cap in seconds | what
STEPS=(
  "adapter|150|bench/adapter_bench.py --device cuda --size kolors: UNet alone vs UNet + adapter, 1024 px"
  "sd15|200|bench/generation_bench.py --device cuda --size sd15 --repeats 1 --sweep 32"
  "pytest-gpu|100|python -m pytest -m gpu -q -p no:cacheprovider"
  "demo|100|python -m gatebench demo --device cuda (the shapes world end to end)"
)

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

pick_python() {
  if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"
  elif [[ -x .venv/bin/python ]]; then echo .venv/bin/python
  else echo python3
  fi
}

fetch_wheels() {
  local py specs=() name version
  py=$(pick_python)
  for name in "${CARRIED[@]}"; do
    version=$("$py" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
      "$name" 2>/dev/null) || { echo "error: expected $name installed in $py (its version is pinned), got none"; return 2; }
    specs+=("$name==$version")
  done
  mkdir -p "$WHEELS"
  rm -f "$WHEELS"/*.whl           # one version of each: two stop the install there
  "$py" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" "${specs[@]}" || return 2
  ls -l "$WHEELS"
  du -sh "$WHEELS"
  echo "carry $WHEELS to the GPU machine and run: bash bench/gpu_check.sh"
}

plan() {
  local row name cap what
  echo "budget ${BUDGET}s; wheels from $WHEELS into $SITE; results in \$OUT"
  for row in "${STEPS[@]}"; do
    IFS='|' read -r name cap what <<<"$row"
    printf '  %-11s cap %4ss  %s\n' "$name" "$cap" "$what"
  done
}

case "${1:-}" in
  --fetch-wheels) fetch_wheels; exit $? ;;
  --plan) plan; exit 0 ;;
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "error: unknown option '$1'; expected --fetch-wheels, --plan or --help"; exit 2 ;;
esac

OUT=${OUT:-$ROOT/bench/out/gpu}
mkdir -p "$OUT" || exit 2
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 \
       YOLO_AUTOINSTALL=false YOLO_VERBOSE=false MPLBACKEND=Agg
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
DEADLINE=$(( T0 + BUDGET ))
PY=${PYTHON:-python3}
RESULTS=()
stamp() { echo "=== $(( $(date +%s) - T0 ))s $*"; }

write_summary() {
  local body="" row
  for row in "${RESULTS[@]}"; do body+="${body:+,}$row"; done
  printf '{"budget_s": %s, "wall_s": %s, "steps": [%s]}\n' "$BUDGET" \
    "$(( $(date +%s) - T0 ))" "$body" > "$OUT/summary.json"
}
trap write_summary EXIT

record() {   # name, status (ok / failed / skipped / timed_out), exit code, seconds
  RESULTS+=("{\"step\": \"$1\", \"status\": \"$2\", \"exit\": $3, \"seconds\": $4}")
  echo "--- $1: $2 (exit $3, $4 s)"
}

step() {     # name, cap, command...
  local name=$1 cap=$2 left began rc status
  shift 2
  left=$(( DEADLINE - $(date +%s) - RESERVE ))
  if (( left < MIN_STEP )); then
    record "$name" skipped -1 0
    return
  fi
  (( cap > left )) && cap=$left
  stamp "$name (cap ${cap}s): $*"
  began=$(date +%s)
  timeout --kill-after=10 "$cap" "$@"
  rc=$?
  status=ok
  (( rc != 0 )) && status=failed
  (( rc == 124 || rc == 137 )) && status=timed_out
  record "$name" "$status" "$rc" "$(( $(date +%s) - began ))"
}

cap_of() {
  local row name cap what
  for row in "${STEPS[@]}"; do
    IFS='|' read -r name cap what <<<"$row"
    [[ $name == "$1" ]] && { echo "$cap"; return; }
  done
  echo 60
}

# --- setup -----------------------------------------------------------------------------------------
stamp setup
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "(no nvidia-smi)"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
if (( ${#wheels[@]} )); then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" || { echo "error: wheel install failed"; exit 2; }
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no wheels in $WHEELS (run 'bash bench/gpu_check.sh --fetch-wheels' where pip works, and carry it)"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - "${MODULES[@]}" <<'EOF' || { echo "error: the setup check failed (see above)"; exit 2; }
import importlib, os, platform, sys
import torch
missing = []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # noqa: BLE001 - report every missing package at once
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
print(f"python {platform.python_version()}, torch {torch.__version__}, "
      f"cuda {torch.cuda.is_available()} {torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}")
if missing or not (torch.cuda.is_available() or os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"):
    sys.exit(f"expected the packages and a CUDA device, got missing: {missing or 'none'}, "
             f"cuda: {torch.cuda.is_available()}")
EOF

# --- the checks, most wanted first -----------------------------------------------------------------
if [[ -f bench/adapter_bench.py ]]; then
  if "$PY" bench/adapter_bench.py --help 2>/dev/null | grep -q -- '--out'; then
    step adapter "$(cap_of adapter)" "$PY" bench/adapter_bench.py --device cuda --size kolors \
      --out "$OUT/adapter_bench_kolors.json"
  else   # no --out flag: keep what it prints
    step adapter "$(cap_of adapter)" bash -c \
      "set -o pipefail; \"$PY\" bench/adapter_bench.py --device cuda --size kolors | tee \"$OUT/adapter_bench_kolors.txt\""
  fi
else
  record adapter missing -1 0
fi
step sd15 "$(cap_of sd15)" "$PY" bench/generation_bench.py --device cuda --size sd15 --repeats 1 \
  --sweep 32 --out "$OUT/generation_bench_sd15.json"
step pytest-gpu "$(cap_of pytest-gpu)" "$PY" -m pytest -m gpu -q -p no:cacheprovider
rm -rf /tmp/gatebench-demo
step demo "$(cap_of demo)" "$PY" -m gatebench demo --device cuda --out /tmp/gatebench-demo
cp /tmp/gatebench-demo/results.json "$OUT/demo_results.json" 2>/dev/null || echo "(no demo results.json)"

stamp finished
write_summary
cat "$OUT/summary.json"
for row in "${RESULTS[@]}"; do
  [[ $row == *'"status": "ok"'* ]] || exit 1
done
exit 0

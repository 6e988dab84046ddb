#!/usr/bin/env bash
# gatebench as a new user gets it (issue 32): a wheel built from this checkout, installed WITHOUT
# -e into a fresh virtual environment, run from an unrelated folder that holds its own train.py
# (and train/ package), so neither the checkout nor a user's file can stand in for the package.
#
#   bash .ci/wheel_smoke.sh [BASE_PYTHON]      # from anywhere; BASE_PYTHON: default python3
#
# BASE_PYTHON's environment must already hold gatebench's dependencies (CI passes its test venv's
# python). The fresh venv does not reinstall them (~6.5 GB): the wheel goes in with --no-deps, and
# only afterwards a .pth line appends the base environment's site-packages to sys.path. A path from
# a .pth is not a site dir, so the base's editable-install hook never runs there: gatebench comes
# from the wheel alone (checked below). WHEEL_SMOKE_DEMO=0 skips `gatebench demo` (~2 min CPU).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
base_python="${1:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "wheel smoke: FAIL: $*" >&2; exit 1; }
step() { echo "wheel smoke: $*"; }

# Build from a copy of the files git knows (tracked + untracked-not-ignored), so the build leaves
# no build/ or egg-info in the checkout and ignored local files cannot leak into the wheel.
mkdir "$work/src" "$work/dist"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
  | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$work/src" -xf -
step "building the wheel"
"$base_python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src" \
  > "$work/build.log" 2>&1 || { cat "$work/build.log" >&2; fail "pip wheel"; }
wheel="$(ls "$work"/dist/gatebench-*.whl)"
"$base_python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
size = sum(i.file_size for i in zipfile.ZipFile(sys.argv[1]).infolist())
assets = [n for n in names if n.startswith("gatebench/world/assets/")]
print(f"wheel smoke: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, "
      f"{size / 2**20:.1f} MiB unpacked, {len(assets)} world assets")
for must in ("gatebench/protocols/shapes.toml", "gatebench/protocols/oracle-coco2014.toml",
             "gatebench/train/cli.py", "gatebench/train/world/base.py",
             "gatebench/world/assets/world_yolo.pt"):
    assert must in names, f"the wheel lacks {must}"
stray = sorted({n.split("/")[0] for n in names} - {"gatebench"} - {
    n.split("/")[0] for n in names if ".dist-info/" in n})
assert not stray, f"the wheel installs top-level names besides gatebench: {stray}"
EOF
ls -l "$wheel" | awk '{printf "wheel smoke: wheel size %.1f MiB\n", $5 / 2^20}'

step "installing it without -e into a fresh venv"
"$base_python" -m venv "$work/venv"
wpy="$work/venv/bin/python"
"$wpy" -m pip install --quiet --no-deps "$wheel" > "$work/install.log" 2>&1 \
  || { cat "$work/install.log" >&2; fail "pip install --no-deps $wheel"; }
deps="$("$base_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
own="$("$wpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$own/zz-gatebench-smoke-deps.pth"

smoke="$work/elsewhere"
mkdir -p "$smoke/train"
printf 'print("USER TRAIN.PY")\nraise SystemExit(3)\n' > "$smoke/train.py"
printf 'raise SystemExit("USER TRAIN PACKAGE")\n' > "$smoke/train/__init__.py"
cd "$smoke"
export PATH="$work/venv/bin:$PATH"
unset PYTHONPATH

where="$(python -c 'import gatebench, gatebench.train; print(gatebench.__file__, gatebench.train.__file__)')"
case "$where" in "$own"/gatebench/__init__.py\ "$own"/gatebench/train/__init__.py) ;;
  *) fail "gatebench is not the wheel's: $where" ;; esac
step "gatebench and gatebench.train come from the wheel ($own)"

out="$(COLUMNS=250 gatebench protocols)" || fail "gatebench protocols exited $?"
for name in shapes oracle-coco2014; do
  grep -q "$name" <<< "$out" || { echo "$out"; fail "gatebench protocols does not list $name"; }
done
step "gatebench protocols lists shapes and oracle-coco2014"

assets="$(python -c 'from gatebench.protocol import ASSETS_DIR; print(ASSETS_DIR)')"
set +e
gatebench run --ckpt "$assets/adapters/good/good_step_4000.pt" --protocol shapes \
  --num-samples 2 --gate-scales 0,1 --device cpu --out "$smoke/run" > "$work/run.log" 2>&1
code=$?
set -e
if [ "$code" -ne 0 ] && [ "$code" -ne 1 ]; then cat "$work/run.log" >&2; fail "run exited $code"; fi
[ -f "$smoke/run/results.json" ] || fail "run wrote no results.json"
step "a 2-layout gatebench run --protocol shapes exited $code (0 passed / 1 a target failed)"

for form in "python -m gatebench train --help" "gatebench train --help" \
            "python -m gatebench.train --help" \
            "python -m torch.distributed.run --nproc_per_node 1 -m gatebench train --help"; do
  text="$($form 2>&1)" || { echo "$text"; fail "$form exited non-zero"; }
  grep -q "USER" <<< "$text" && fail "$form ran the user's train.py / train/"
  grep -q -- "--mixed-data" <<< "$text" || { echo "$text"; fail "$form: no gatebench trainer help"; }
  step "$form shows gatebench's trainer"
done

if [ "${WHEEL_SMOKE_DEMO:-1}" != "0" ]; then
  start=$SECONDS
  gatebench demo --out "$smoke/demo" > "$work/demo.log" 2>&1 || { tail -40 "$work/demo.log" >&2; fail "gatebench demo"; }
  step "gatebench demo passed ($((SECONDS - start)) s)"
fi
step "passed"

"""Rerun every case of issue 14 (hostile input) through the CLI: one PASS/FAIL row per case and
the counts. `python bench/hostile_checklist.py [--out FILE.json]` (about 10-60 s on CPU).
Exit 0 when every check passes, 1 when one fails (a crash is a traceback)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

_parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
_parser.add_argument("--out", type=Path, default=None, help="write the rows and counts as JSON here")
ARGS = _parser.parse_args()

# run as a script (bench/ is sys.path[0]): the repository root goes first, hence E402 below
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # gatebench and bench/
from gatebench.render.console import quiet_model_libraries  # noqa: E402

quiet_model_libraries()
import diffusers.utils.logging as dl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers.utils.logging as tl  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from bench.fixtures import png_header_only, random_adapters, world_images  # noqa: E402
from gatebench.cli import cli  # noqa: E402
from gatebench.metrics.images import to_pil_rgb  # noqa: E402

for lib in (tl, dl):
    lib.disable_progress_bar()
    lib.set_verbosity_error()


def user_state(gate, widths=(16, 32), text_dim=8):
    """A user-format state dict (random to_out, every gate at ``gate``)."""
    return dict(random_adapters(widths, text_dim, gate=gate).state_dict())


R = Path(tempfile.mkdtemp(prefix="gatebench-checklist-"))
WT = Path(__file__).resolve().parent.parent
CK = WT / "gatebench/world/assets/adapters/good/good_step_4000.pt"
GOLD = WT / "tests/data/golden/run"
SH = (WT / "protocols/shapes.toml").read_text()
rows: list[tuple[bool, str, Any, Any, bool, str]] = []   # ok, case, expected, got, traceback, last


def case(label, args, expect, must=None):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    crash = r.exception is not None and not isinstance(r.exception, SystemExit)
    tb = crash or "Traceback" in r.output
    one = r.exit_code != 2 or (len(lines) == 1 and lines[0].startswith("error:"))
    ok = (r.exit_code == expect) and not tb and one and (must is None or must in r.output.replace("\n", ""))
    rows.append((bool(ok), label, expect, r.exit_code, tb, (lines[-1] if lines else "")[:150]))


def f(name, data):
    p = R / name
    p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(data, bytes) else p.write_text)(data)
    return p


def gb(name, **hdr):
    h = {"format": "gatebench-adapter", "format_version": 1, "family": "user", "adapter_config": {},
         "base_model": {}, "training": {}, **hdr, "state_dict": user_state(0.3)}
    torch.save(h, R / name)
    return R / name


def st(name, meta):
    from safetensors.torch import save_file
    save_file(user_state(0.3), str(R / name), metadata={"gatebench": meta})
    return R / name


def proto(name, text):
    return f(name, text)


def set_in(section, line):
    out, cur, done = [], None, False
    key = line.split("=")[0].strip()
    for row in SH.splitlines():
        if row.startswith("["):
            cur = row.strip("[] ")
        if cur == section and row.split("=")[0].strip() == key:
            continue
        out.append(row)
        if row.strip() == f"[{section}]" and not done:
            out.append(line)
            done = True
    if not done:
        out = [line] + out if section is None else out + [f"[{section}]", line]
    return "\n".join(out) + "\n"


def run_args(p, *extra):
    return ["run", "--ckpt", CK, "--protocol", p, "--out", R / "o", *extra]


# checkpoints
case("non-torch bytes named .pt", ["gates", f("junk.pt", b"hello, not torch")], 2, "junk.pt")
case("binary junk named .pt", ["gates", f("junk2.pt", bytes(range(256)) * 4)], 2, "junk2.pt")
case("'{}' in a .pt (no weights_only advice)", ["gates", f("brace.pt", b"{}")], 2, "brace.pt")
case("safetensors metadata not JSON", ["gates", st("a.safetensors", "{x")], 2, "a.safetensors")
case("safetensors metadata a list", ["gates", st("b.safetensors", "[1]")], 2, "'gatebench'")
case("safetensors string format_version", ["gates", st("c.safetensors", json.dumps({"format": "gatebench-adapter", "format_version": "2"}))], 2, "format_version")
case("header training a list", ["gates", gb("t.pt", training=[1, 2])], 2, "'training'")
case("header step a string", ["gates", gb("s.pt", training={"step": "x"})], 2, "training.step")
case("gate_history short row", ["gates", gb("g1.pt", training={"gate_history": [[1]]})], 2, "gate_history[0]")
case("gate_history string row", ["gates", gb("g2.pt", training={"gate_history": [["a", 1, 1, 1, 1]]})], 2, "gate_history[0][0]")
s = user_state(0.3)
s["dim_16.gated_attn.to_out.weight"] = 5
torch.save(s, R / "io.pt")
case("integer to_out", ["gates", R / "io.pt"], 2, "to_out.weight")
torch.save({"down.0.fuser.alpha_attn": torch.tensor([])}, R / "gl.pt")
case("0-d/empty GLIGEN weight", ["gates", R / "gl.pt"], 2, "gl.pt")
torch.save({"down.0.fuser.alpha_attn": torch.tensor(0.5), "down.0.fuser.attn.to_q.weight": torch.tensor(1.0)}, R / "gl0.pt")
case("0-d GLIGEN to_q weight (readable, gates only)", ["gates", R / "gl0.pt"], 0)
s = user_state(0.3, (64,), 64)
s["dim_64.gated_attn.to_q.weight"] = torch.zeros(3, 3)
torch.save(s, R / "sz.pt")
case("shapes that do not fit keys (run)", ["run", "--ckpt", R / "sz.pt", "--protocol", "shapes", "--out", R / "o_sz", "--num-samples", "1", "--steps", "1"], 2, "size mismatch")
# logs
case("log step too large", ["gates", "--log", f("big.log", "Step 99999999999999999999999: Gate stats - mean: 0.1, std: 0.1, min: 0.0, max: 0.2\n")], 2, "big.log:1")
case("JSONL string value", ["gates", "--log", f("s.jsonl", '{"step": 1, "gate_mean": "x"}\n')], 2, "'gate_mean'")
case("JSONL step 1e400", ["gates", "--log", f("b.jsonl", '{"step": 1e400, "gate_mean": 0.1}\n')], 2, "'step'")
case("JSONL gate 1e400 -> nan finding, FAIL", ["gates", "--log", f("i.jsonl", '{"step": 1, "gate_mean": 1e400}\n')], 1, "nan")
case("JSONL invalid UTF-8", ["gates", "--log", f("u.jsonl", b'{"step": 1, "gate_mean": 0.1}\n\xff\n')], 2, "u.jsonl:2")
case("NaN gate line in train.log FAILS", ["gates", "--log", f("n.log", "Step 1: Gate stats - mean: 0.1, std: 0.1, min: 0.0, max: 0.2\nStep 2: Gate stats - mean: nan, std: nan, min: nan, max: nan\n")], 1, "nan")
# check-init
for w in ["0", "-32", "", "16,20", "32.7"]:
    case(f"check-init --widths {w!r}", ["check-init", "--init", "gligen", "--widths", w], 2, "--widths")
case("check-init --text-dim 0", ["check-init", "--text-dim", "0"], 2, "--text-dim")
case("check-init --ckpt text file", ["check-init", "--ckpt", f("t.txt", "hello")], 2, "t.txt")
torch.save({k: v for k, v in user_state(0.0).items() if "to_out" not in k}, R / "noout.pt")
case("check-init --ckpt without to_out", ["check-init", "--ckpt", R / "noout.pt"], 2, "to_out")
# --out and markup
taken = f("taken", "keep")
torch.save(user_state(0.3), R / "e.pt")
case("gates --out an existing file", ["gates", R / "e.pt", "--out", taken], 2, "taken")
case("run --out an existing file", ["run", "--ckpt", CK, "--protocol", "shapes", "--out", taken], 2, "taken")
(R / "[bold]m[").mkdir()
case("path with [/x] in the error printer", ["gates", R / "[bold]m[/x].pt"], 2, "[bold]m[/x].pt")
# flags and protocol values
case("run --batch-size -1", run_args("shapes", "--batch-size", "-1"), 2, "--batch-size")
case("protocol batch_size = 0", run_args(proto("bs.toml", set_in("generation", "batch_size = 0"))), 2, "batch_size")
case("run --device tpu9", run_args("shapes", "--device", "tpu9"), 2, "--device")
case("protocol ci_level = 7.0", run_args(proto("ci.toml", set_in("scoring", "ci_level = 7.0"))), 2, "ci_level")
case("run --num-samples -1", run_args("shapes", "--num-samples", "-1"), 2, "--num-samples")
case("protocol num_samples = -2", run_args(proto("ns.toml", set_in(None, "num_samples = -2"))), 2, "num_samples")
case("demo --num-samples 0", ["demo", "--num-samples", "0", "--out", R / "d"], 2, "--num-samples")
case("NaN gate scales name the flag", run_args("shapes", "--gate-scales", "0.5,nan"), 2, "--gate-scales")
case("protocol gate_scales = []", run_args(proto("gs.toml", set_in("generation", "gate_scales = []"))), 2, "gate_scales")
case("[gates] collapse_fraction = 7.5", run_args(proto("cf.toml", set_in("gates", "collapse_fraction = 7.5"))), 2, "collapse_fraction")
case("[gates] near_zero = -1", run_args(proto("nz.toml", set_in("gates", "near_zero = -1"))), 2, "near_zero")
case("[generation] in a message survives", run_args(proto("ty.toml", set_in("generation", "stpes = 3"))), 2, "in [generation]")
bom = proto("bom.toml", "\ufeff" + SH)
case("protocol with a UTF-8 BOM loads", ["gates", R / "e.pt", "--protocol", bom], 0)


# results.json / samples.jsonl
def mut(name, edit):
    run = R / name
    shutil.copytree(GOLD, run)
    d = json.loads((run / "results.json").read_text())
    edit(d)
    (run / "results.json").write_text(json.dumps(d))
    return run / "results.json"



for name, edit, field in [("rs", lambda d: d.update(results="x"), "'results'"), ("pn", lambda d: d.update(protocol=None), "'protocol'"), ("dm", lambda d: d.pop("device"), "'device'")]:
    p = mut(name, edit)
    case(f"report: {name} ({field})", ["report", p, "--out", R / f"{name}.md"], 2, field)
    case(f"compare: {name} ({field})", ["compare", GOLD / "results.json", p], 2, field)
# never overwrite
ok_run = mut("okrun", lambda d: None)
before = {q.name: q.read_bytes() for q in ok_run.parent.iterdir() if q.is_file()}
case("report --out RUN/results.json", ["report", ok_run, "--out", ok_run], 2, "--out")
case("report --out RUN/samples.jsonl", ["report", ok_run, "--out", ok_run.parent / "samples.jsonl"], 2, "--out")
case("compare A B --out A", ["compare", ok_run, GOLD / "results.json", "--out", ok_run], 2, "--out")
after = {q.name: q.read_bytes() for q in ok_run.parent.iterdir() if q.is_file()}
rows.append((before == after, "run folder byte-identical after those three", "-", "-", False, ""))
# wrong results
(R / "world").mkdir()
imgs, lay, det = world_images(R / "world")
r = CliRunner().invoke(cli, ["score", "--images", str(imgs), "--layouts", str(lay), "--detections", str(det), "--json"])
v = json.loads(r.output)["metrics"]["iou50_rate"]["value"] if r.exit_code == 0 else None
rows.append((v == 1.0, "perfect detections on the shapes world score 1.0", 0, r.exit_code, False, f"iou50_rate={v}"))
ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
Image.fromarray(ramp).save(R / "g16.png")
m = float(np.asarray(to_pil_rgb(R / "g16.png")).mean())
rows.append((100 < m < 160, "16-bit PNG not white", "-", "-", False, f"mean={m:.1f} (white=255)"))
bl = f("bl/layouts.jsonl", json.dumps({"image_path": "a.png", "caption": "x", "objects": [
    {"name": "dog", "bbox": [0.2, 0.3, 1.6, 0.9]}]}) + "\n")
(R / "bl/images").mkdir()
case("bbox with one value > 1.5 refused", ["score", "--images", R / "bl/images", "--layouts", bl], 2, "layouts.jsonl:1")
(R / "bomb").mkdir()
i1, l1, d1 = world_images(R / "bomb", n=1)
name = json.loads(l1.read_text().splitlines()[0])["image_path"]
png_header_only(i1 / name, 60000, 60000)
case("decompression-bomb PNG", ["score", "--images", i1, "--layouts", l1, "--detections", d1], 2, "decompression bomb")
# before generating
for label, state, field in [("text_dim", user_state(0.3, (16, 32), 8), "text_dim"), ("widths", user_state(0.3, (16, 32), 64), "widths"), ("missing to_out", {k: v for k, v in user_state(0.3, (64,), 64).items() if "to_out" not in k}, "to_out")]:
    p = R / f"pre_{field}.pt"
    torch.save(state, p)
    out = R / f"o_{field.replace(' ', '_')}"
    case(f"adapter {label} refused before generating", ["run", "--ckpt", p, "--protocol", "shapes", "--out", out, "--num-samples", "1", "--steps", "1"], 2, field)
    rows.append((not list(out.rglob("*.png")), f"  ... and no image generated ({label})", "-", "-", False, ""))
for ok, label, exp, got, tb, last in rows:
    print(f"{'PASS' if ok else 'FAIL'} | {label} | expect {exp} got {got} | tb={tb} | {last}")
counts = {"checks": len(rows), "passed": sum(bool(r[0]) for r in rows),
          "invalid_inputs_exit_2_one_line": sum(1 for r in rows if r[2] == 2 and r[3] == 2 and r[0]),
          "tracebacks": sum(bool(r[4]) for r in rows)}
print(f"\n{counts['passed']}/{counts['checks']} checks pass; "
      f"{counts['invalid_inputs_exit_2_one_line']} invalid inputs exit 2 with one "
      f"line; tracebacks: {counts['tracebacks']}")
if ARGS.out:
    ARGS.out.parent.mkdir(parents=True, exist_ok=True)
    ARGS.out.write_text(json.dumps({**counts, "rows": [
        {"passed": bool(ok), "case": label, "expected_exit": exp, "exit": got, "traceback": bool(tb),
         "last_line": last.replace(str(R), "$TMP")} for ok, label, exp, got, tb, last in rows]},
        indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {ARGS.out}")
shutil.rmtree(R, ignore_errors=True)
sys.exit(0 if all(r[0] for r in rows) else 1)

"""Benchmark (not a test): `gatebench gates` over 20 real-size Kolors-layout checkpoints vs torch.load.

Builds COUNT user-format checkpoints (default 20, widths 640 and 1280, text_dim 4096, ~70 MB each;
epoch k has every gate at 0.05 k), then times, each in a fresh process:
(a) a plain ``torch.load`` of each file, (b) gatebench's memory-mapped gate reading in-process
(``inspect_checkpoint``), (c) the `gatebench gates DIR --json` command end to end (interpreter
start-up included), prints peak RSS of (a) and (b), and checks that the gates the command read
back are the ones written. Exit 0 when it ran (1 when the read-back gates are wrong, a crash is a
traceback).

Usage: python bench/gates_bench.py [--count 20] [--widths 640,1280] [--text-dim 4096]
       [--dir DIR] [--keep] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gatebench.adapters.user import AdapterSet  # noqa: E402


def build(folder: Path, count: int, widths: list[int], text_dim: int) -> list[Path]:
    torch.manual_seed(0)
    adapters = AdapterSet(widths, text_dim=text_dim)
    paths = []
    for epoch in range(1, count + 1):
        with torch.no_grad():
            for adapter in adapters.values():
                adapter.gated_attn.gate.fill_(0.05 * epoch)
        path = folder / f"epoch_{epoch}.pt"
        torch.save(adapters.state_dict(), path)
        paths.append(path)
    return paths


def child_env() -> dict[str, str]:
    """The children import gatebench from this checkout whatever the working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def child_rss(code: str) -> tuple[float, float]:
    """Run python code in a fresh process; return (seconds, peak RSS MB)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code + "\nimport resource;"
                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                         capture_output=True, text=True, check=True, env=child_env())
    return time.perf_counter() - start, int(out.stdout.strip().splitlines()[-1]) / 1024


def read_back(doc: dict, count: int) -> dict[str, object]:
    """The gates `gatebench gates --json` reported vs the ones written (0.05 * epoch)."""
    worst, seen = 0.0, 0
    for entry in doc.get("checkpoints", []):
        epoch = int(Path(entry["path"]).stem.split("_")[-1])
        for gate in entry["gates"]:
            worst = max(worst, abs(float(gate["raw"]) - 0.05 * epoch))
        seen += 1
    return {"checkpoints_reported": seen, "max_abs_gate_error": worst,
            "ok": seen == count and worst < 1e-6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--widths", default="640,1280", help="adapter widths (Kolors: 640,1280)")
    parser.add_argument("--text-dim", type=int, default=4096, help="phrase width (Kolors: 4096)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        widths = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        parser.error(f"expected --widths like 640,1280, got {args.widths!r}")
    if args.count < 1 or args.text_dim < 8 or not widths or min(widths) < 8 or \
            any(w % 8 for w in widths):
        parser.error("expected --count >= 1, --text-dim >= 8 and widths that are multiples of 8")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="gatebench-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        paths = build(folder, args.count, widths, args.text_dim)
        size = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{len(paths)} checkpoints, {size / len(paths):.1f} MB each, {size:.0f} MB total, "
              f"in {folder}")
        files = repr([str(p) for p in paths])
        load_s, load_rss = child_rss(
            f"import torch,time\nt=time.perf_counter()\nfor p in {files}: torch.load(p, weights_only=True)\n"
            "print(time.perf_counter()-t)")
        inproc_s, inproc_rss = child_rss(
            "import time\nfrom gatebench.checkpoint import inspect_checkpoint\nt=time.perf_counter()\n"
            f"for p in {files}: inspect_checkpoint(p)\nprint(time.perf_counter()-t)")
        start = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "gatebench", "gates", str(folder), "--json"],
                             capture_output=True, text=True, check=False, env=child_env())
        cli_s = time.perf_counter() - start
        try:
            check = read_back(json.loads(cli.stdout), len(paths))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            check = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "stderr_tail": cli.stderr[-500:]}
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    doc = {"checkpoints": len(paths), "mb_each": size / len(paths), "widths": widths,
           "text_dim": args.text_dim,
           "torch_load": {"process_s": load_s, "peak_rss_mb": load_rss},
           "inspect_checkpoint": {"process_s": inproc_s, "peak_rss_mb": inproc_rss},
           "gates_cli": {"wall_s": cli_s, "exit_code": cli.returncode,
                         "s_per_checkpoint": cli_s / len(paths)},
           "rss_ratio_inspect_over_torch_load": inproc_rss / load_rss,
           "read_back": check}
    print(f"plain torch.load of each (process total): {load_s:6.2f} s, peak RSS {load_rss:7.0f} MB")
    print(f"gatebench inspect_checkpoint (mmap+sha256): {inproc_s:6.2f} s, peak RSS {inproc_rss:7.0f} MB")
    print(f"`gatebench gates DIR --json` end to end:   {cli_s:6.2f} s (exit {cli.returncode})")
    print(f"gates read back: {'OK' if check['ok'] else 'WRONG'} "
          f"({check.get('checkpoints_reported', 0)}/{len(paths)} checkpoints, max |error| "
          f"{check.get('max_abs_gate_error', float('nan')):.2g})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

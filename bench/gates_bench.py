"""Benchmark (not a test): `gatebench gates` over 20 real-size Kolors-layout checkpoints vs torch.load.

Builds 20 user-format checkpoints (widths 640 and 1280, text_dim 4096, ~70 MB each), then times
(a) a plain ``torch.load`` of each file, (b) gatebench's memory-mapped gate reading in-process,
(c) the `gatebench gates DIR --json` command end to end (interpreter start-up included), and
prints peak RSS for each. Usage: python bench/gates_bench.py [--dir DIR] [--keep]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gatebench.adapters.user import AdapterSet  # noqa: E402


def build(folder: Path, count: int) -> list[Path]:
    torch.manual_seed(0)
    adapters = AdapterSet([640, 1280], text_dim=4096)
    paths = []
    for epoch in range(1, count + 1):
        with torch.no_grad():
            for adapter in adapters.values():
                adapter.gated_attn.gate.fill_(0.05 * epoch)
        path = folder / f"epoch_{epoch}.pt"
        torch.save(adapters.state_dict(), path)
        paths.append(path)
    return paths


def child_rss(code: str) -> tuple[float, float]:
    """Run python code in a fresh process; return (seconds, peak RSS MB)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code + "\nimport resource;"
                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                         capture_output=True, text=True, check=True)
    return time.perf_counter() - start, int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="gatebench-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = build(folder, args.count)
    size = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{len(paths)} checkpoints, {size / len(paths):.1f} MB each, {size:.0f} MB total, in {folder}")
    files = repr([str(p) for p in paths])
    load_s, load_rss = child_rss(
        f"import torch,time\nt=time.perf_counter()\nfor p in {files}: torch.load(p, weights_only=True)\n"
        "print(time.perf_counter()-t)")
    inproc_s, inproc_rss = child_rss(
        "import time\nfrom gatebench.checkpoint import inspect_checkpoint\nt=time.perf_counter()\n"
        f"for p in {files}: inspect_checkpoint(p)\nprint(time.perf_counter()-t)")
    start = time.perf_counter()
    gatebench = shutil.which("gatebench") or "gatebench"
    subprocess.run([gatebench, "gates", str(folder), "--json"], capture_output=True, check=False)
    cli_s = time.perf_counter() - start
    print(f"plain torch.load of each (process total): {load_s:6.2f} s, peak RSS {load_rss:7.0f} MB")
    print(f"gatebench inspect_checkpoint (mmap+sha256): {inproc_s:6.2f} s, peak RSS {inproc_rss:7.0f} MB")
    print(f"`gatebench gates DIR --json` end to end:   {cli_s:6.2f} s")
    if not args.keep and args.dir is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()

"""`gatebench watch` on the shapes world (CPU): what a checkpoint costs beyond its own
generation and scoring, the memory over K checkpoints, and the idle cost of follow mode.

    python bench/watch_bench.py                       # 20 checkpoints, 16 layouts, scales 0,1
    python bench/watch_bench.py --checkpoints 2 --num-samples 2 --steps 2 --idle-seconds 2

K checkpoints are made from the world's good_step_4000.pt with every gate nudged by 1 % per
checkpoint and its recorded step rewritten (distinct content, distinct series points) as
step_500.pt, step_1000.pt, ... One `watch --once` evaluates
them in-process; per checkpoint it reports the seconds, run's own generate_s and score_s, the
rest (overhead: report, run folder, TensorBoard, findings), the images generated and the RSS.
Then a follow-mode watch of the same folder (everything evaluated) idles in a subprocess for
--idle-seconds: its CPU time over that window is the idle cost.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_run(folder: Path, count: int) -> list[Path]:
    import torch

    from gatebench.protocol import ASSETS_DIR

    source = torch.load(ASSETS_DIR / "adapters" / "good" / "good_step_4000.pt",
                        map_location="cpu", weights_only=True)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        tensors = {k: (v * (1 + 0.01 * i) if k.endswith(".gate") else v)
                   for k, v in source["state_dict"].items()}
        step = 500 * (i + 1)
        path = folder / f"step_{step}.pt"
        torch.save({**source, "state_dict": tensors,
                    "training": {**source["training"], "step": step}}, path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--gate-scales", default="0,1")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (protocol's: 20)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run and watch folders")
    args = parser.parse_args(argv)
    if args.checkpoints < 1 or args.num_samples < 1 or args.idle_seconds < 0:
        parser.error("--checkpoints and --num-samples must be >= 1, --idle-seconds >= 0")

    from gatebench.protocol import load_protocol, with_flags
    from gatebench.watch.evaluate import WatchOptions
    from gatebench.watch.follow import watch

    scales = tuple(float(s) for s in args.gate_scales.split(","))
    protocol = with_flags(load_protocol("shapes"), num_samples=args.num_samples,
                          gate_scales=scales, steps=args.steps)
    work = Path(tempfile.mkdtemp(prefix="watch-bench-"))
    os.environ.setdefault("GATEBENCH_CACHE", str(work / "cache"))
    run, out = work / "run", work / "out"
    make_run(run, args.checkpoints)
    rss: list[float] = []
    began = time.perf_counter()
    result = watch(run, protocol, WatchOptions(out=out, once=True, settle_s=0.0,
                                               device=args.device),
                   on_event=lambda line: rss.append(rss_mib())
                   if line.startswith("evaluated ") else None)
    total = time.perf_counter() - began
    rows = []
    for i, entry in enumerate(e for e in result.state.checkpoints if e.results):
        doc = json.loads((out / str(entry.results)).read_text())
        t, g = doc["timings"], doc["generation"]
        own = t["generate_s"] + t["score_s"]
        rows.append({"checkpoint": entry.name, "seconds": entry.seconds,
                     "generate_s": round(t["generate_s"], 3), "score_s": round(t["score_s"], 3),
                     "overhead_s": round(entry.seconds - own, 3),
                     "overhead_share": round((entry.seconds - own) / own, 4),
                     "generated": g["generated"], "rss_mib": round(rss[i], 1)})
    print(f"{'checkpoint':<16}{'s':>8}{'gen s':>8}{'score s':>9}{'other s':>9}{'other %':>9}"
          f"{'images':>8}{'RSS MiB':>9}")
    for r in rows:
        print(f"{r['checkpoint']:<16}{r['seconds']:>8.2f}{r['generate_s']:>8.2f}"
              f"{r['score_s']:>9.2f}{r['overhead_s']:>9.2f}{100 * r['overhead_share']:>8.1f}%"
              f"{r['generated']:>8}{r['rss_mib']:>9.1f}")
    later = rows[1:] or rows
    figures = {
        "checkpoints": len(rows), "num_samples": args.num_samples, "gate_scales": scales,
        "total_s": round(total, 2),
        "model_load_s": round(rows[0]["seconds"] - later[0]["seconds"], 2)
        if len(rows) > 1 else None,
        "median_s_per_checkpoint": sorted(r["seconds"] for r in later)[len(later) // 2],
        "median_overhead_share": sorted(r["overhead_share"] for r in later)[len(later) // 2],
        "images_generated": [r["generated"] for r in rows],
        "rss_growth_mib_after_first": round(rows[-1]["rss_mib"] - rows[0]["rss_mib"], 1),
        "rows": rows}
    if args.idle_seconds > 0:
        follower = subprocess.Popen(
            [sys.executable, "-m", "gatebench", "watch", str(run), "--protocol", "shapes",
             "--num-samples", str(args.num_samples), "--gate-scales", args.gate_scales,
             *(["--steps", str(args.steps)] if args.steps else []), "--out", str(out),
             "--poll", "1", "--settle", "0"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env={**os.environ})
        try:
            time.sleep(15.0)            # start-up: imports, the first poll, watch.json
            first = cpu_seconds(follower.pid)
            time.sleep(args.idle_seconds)
            idle = (cpu_seconds(follower.pid) - first) / args.idle_seconds
        finally:
            follower.terminate()
            follower.wait(timeout=30)
        figures["idle_cpu_share_of_one_core"] = round(idle, 5)
        print(f"follow mode, idle: {100 * idle:.2f} % of one core over {args.idle_seconds:g} s")
    print(f"total {total:.1f} s for {len(rows)} checkpoints; median per checkpoint after the "
          f"first {figures['median_s_per_checkpoint']:.2f} s (overhead "
          f"{100 * figures['median_overhead_share']:.1f} %); RSS growth after the first "
          f"{figures['rss_growth_mib_after_first']:+.1f} MiB")
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

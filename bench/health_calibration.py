"""Calibration study of image health on labelled real images (shared/seed/garbled-calibration).

Prints the per-image cue table, the leave-one-out result of the garbled threshold rule, the
synthetic-corruption detection rates and the twin-relative check (gate-3.0 vs learned-gate pairs).
Usage: python bench/health_calibration.py [FOLDER]   (FOLDER holds the PNGs and labels.csv)
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from gatebench.metrics import health
from gatebench.metrics.corruptions import KINDS, corrupt

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "garbled-calibration"
STRENGTHS = (0.1, 0.3, 0.6)


def threshold_rule(clean: list[float], garbled: list[float]) -> float:
    """Geometric midpoint of the widest gap among the cut points with the fewest errors."""
    values = sorted(set(clean + garbled))
    cuts = [(a, b) for a, b in zip(values, values[1:])]
    def errors(t: float) -> int:
        return sum(c > t for c in clean) + sum(g <= t for g in garbled)
    best = min(errors(math.sqrt(a * b)) for a, b in cuts)
    a, b = max((c for c in cuts if errors(math.sqrt(c[0] * c[1])) == best),
               key=lambda c: c[1] / c[0])
    return math.sqrt(a * b)


def main(folder: Path) -> None:
    rows = list(csv.DictReader((folder / "labels.csv").open(encoding="utf-8")))
    images = {r["file"]: np.asarray(Image.open(folder / r["file"]).convert("RGB").resize(
        (256, 256), Image.BOX)) for r in rows}
    label = {r["file"]: r["label"] for r in rows}
    cues = ("colour_edges", "colour_noise", "vivid", "light_p99", "light_p1", "spread",
            "chroma_p99")
    print(f"{'image':22} {'label':8}" + "".join(f"{c:>13}" for c in cues)
          + f"{'garbled':>9}{'blank':>7}  flags")
    stats = {}
    for f in sorted(images, key=lambda f: (label[f], f)):
        s = stats[f] = health.health_stats(images[f])
        h = health.assess(images[f])
        print(f"{f:22} {label[f]:8}" + "".join(f"{s[c]:13.3f}" for c in cues)
              + f"{h.garbled_score:9.2f}{h.blank_score:7.2f}  "
              + ("GARBLED" if h.garbled else "") + ("BLANK" if h.blank else ""))
    edge = {f: s["colour_edges"] for f, s in stats.items() if label[f] != "blank"}
    clean = [v for f, v in edge.items() if label[f] == "clean"]
    bad = [v for f, v in edge.items() if label[f] == "garbled"]
    print(f"\nthreshold rule on all: {threshold_rule(clean, bad):.2f}")
    wrong = []
    for f, v in edge.items():
        c = [u for g, u in edge.items() if g != f and label[g] == "clean"]
        b = [u for g, u in edge.items() if g != f and label[g] == "garbled"]
        t = threshold_rule(c, b)
        if (v > t) != (label[f] == "garbled"):
            wrong.append(f"{f} ({v:.2f} vs {t:.2f})")
    print(f"leave-one-out: {len(edge) - len(wrong)}/{len(edge)} right; wrong: {', '.join(wrong)}")
    cleans = [f for f in images if label[f] == "clean"]
    print(f"\nsynthetic corruptions of the {len(cleans)} clean images, share flagged garbled"
          " (absolute / vs the uncorrupted twin):")
    for kind in KINDS:
        cells = []
        for strength in STRENGTHS:
            hits = [(health.assess(bad).garbled, health.assess(bad, images[f]).garbled)
                    for i, f in enumerate(cleans)
                    for bad in [corrupt(images[f], kind, strength, seed=i)]]
            cells.append(f"{strength:g}: {np.mean([a for a, _ in hits]):.2f} / "
                         f"{np.mean([r for _, r in hits]):.2f}")
        print(f"  {kind:9} " + "   ".join(cells))
    print("\ntwin check (gate 3.0 image vs the learned-gate image of the same prompt):")
    for f in sorted(images):
        twin = f.replace("gate_3.0_", "gate_learned_")
        if f.startswith("gate_3.0_") and twin in images:
            h = health.assess(images[f], images[twin])
            print(f"  {f:18} {label[f]:8} ssim {health.structure_similarity(images[f], images[twin]):.2f}"
                  f"  score {h.garbled_score:.2f} garbled {h.garbled} blank {h.blank}")
    for f in cleans:
        others = [g for g in cleans if g != f]
        ref = images[others[cleans.index(f) % len(others)]]
        h = health.assess(images[f], ref)
        print(f"  clean {f} vs an unrelated clean image: score {h.garbled_score:.2f}"
              f" garbled {h.garbled}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)

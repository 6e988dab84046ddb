"""Calibration study of image health on labelled real images (shared/seed/garbled-calibration).

Prints the per-image cue table (and whether each image's flags agree with its label), the
leave-one-out result of the garbled threshold rule, the synthetic-corruption detection rates and the
twin-relative check (gate-3.0 vs learned-gate pairs).

Usage: python bench/health_calibration.py [FOLDER] [--size 256] [--strengths 0.1,0.3,0.6]
       [--kinds noise,streaks,blotches] [--out FILE.json]
FOLDER holds the PNGs and their labels: a ``labels.csv`` (columns file, label: clean / garbled /
blank), or, failing that, a README.md with a Markdown table that has ``file`` and ``label`` columns
(as tests/data/health/README.md, the 7 downscaled copies that ship with the repository). Default:
../shared/seed/garbled-calibration beside the checkout (18 real 1024 px images, not in the
repository) when it is there, else tests/data/health.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gatebench.metrics import health  # noqa: E402
from gatebench.metrics.corruptions import KINDS, corrupt  # noqa: E402

SEED = ROOT.parent / "shared" / "seed" / "garbled-calibration"
SHIPPED = ROOT / "tests" / "data" / "health"
STRENGTHS = (0.1, 0.3, 0.6)
LABELS = ("clean", "garbled", "blank")
CUES = ("colour_edges", "colour_noise", "vivid", "light_p99", "light_p1", "spread", "chroma_p99")


def threshold_rule(clean: list[float], garbled: list[float]) -> float:
    """Geometric midpoint of the widest gap among the cut points with the fewest errors."""
    values = sorted(set(clean + garbled))
    cuts = list(itertools.pairwise(values))

    def errors(t: float) -> int:
        return sum(c > t for c in clean) + sum(g <= t for g in garbled)
    best = min(errors(math.sqrt(a * b)) for a, b in cuts)
    a, b = max((c for c in cuts if errors(math.sqrt(c[0] * c[1])) == best),
               key=lambda c: c[1] / c[0])
    return math.sqrt(a * b)


def read_labels(folder: Path) -> dict[str, str]:
    """{file: label} from labels.csv, else from README.md's Markdown table (file, label columns)."""
    if (folder / "labels.csv").is_file():
        with (folder / "labels.csv").open(encoding="utf-8") as handle:
            rows = {r["file"].strip(): r["label"].strip() for r in csv.DictReader(handle)}
    elif (folder / "README.md").is_file():
        rows, header = {}, None
        for line in (folder / "README.md").read_text(encoding="utf-8").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.lstrip().startswith("|"):
                header = None
            elif header is None and "file" in cells and "label" in cells:
                header = cells
            elif header is not None and not set(line.strip()) <= set("|- :"):
                row = dict(zip(header, cells, strict=False))   # a short row: its cells
                rows[row["file"]] = row["label"]
    else:
        raise ValueError(f"expected labels.csv or a README.md table (file, label) in {folder}, "
                         "got neither")
    bad = {f: v for f, v in rows.items() if v not in LABELS or not (folder / f).is_file()}
    if bad or not rows:
        raise ValueError(f"expected existing files labelled {'/'.join(LABELS)} in {folder}, "
                         f"got {bad or 'no rows'}")
    return rows


def agrees(label: str, h: Any) -> bool:
    return (h.garbled, h.blank) == (label == "garbled", label == "blank")


def study(folder: Path, label: dict[str, str], size: int, strengths: tuple[float, ...],
          kinds: tuple[str, ...]) -> dict[str, Any]:
    images = {}
    for f in label:
        with Image.open(folder / f) as image:
            image = image.convert("RGB")
            images[f] = np.asarray(image.resize((size, size), Image.Resampling.BOX) if image.size != (size, size)
                                   else image)
    doc: dict[str, Any] = {"folder": str(folder), "size": size, "images": len(images),
                           "labels": {k: sum(v == k for v in label.values()) for k in LABELS},
                           "per_image": {}}
    print(f"{len(images)} images from {folder} at {size} px: " +
          ", ".join(f"{n} {k}" for k, n in doc["labels"].items()))
    print(f"{'image':22} {'label':8}" + "".join(f"{c:>13}" for c in CUES)
          + f"{'garbled':>9}{'blank':>7}  flags")
    stats = {}
    for f in sorted(images, key=lambda f: (label[f], f)):
        s = stats[f] = health.health_stats(images[f])
        h = health.assess(images[f])
        doc["per_image"][f] = {"label": label[f], **{c: float(s[c]) for c in CUES},
                               "garbled_score": float(h.garbled_score), "garbled": bool(h.garbled),
                               "blank_score": float(h.blank_score), "blank": bool(h.blank),
                               "agrees_with_label": agrees(label[f], h)}
        print(f"{f:22} {label[f]:8}" + "".join(f"{s[c]:13.3f}" for c in CUES)
              + f"{h.garbled_score:9.2f}{h.blank_score:7.2f}  "
              + ("GARBLED" if h.garbled else "") + ("BLANK" if h.blank else "")
              + ("" if agrees(label[f], h) else "  (label: " + label[f] + ")"))
    doc["absolute_agreement"] = sum(r["agrees_with_label"] for r in doc["per_image"].values())
    print(f"flags agree with the label on {doc['absolute_agreement']}/{len(images)} images "
          "(absolute, no twin)")
    edge = {f: s["colour_edges"] for f, s in stats.items() if label[f] != "blank"}
    clean = [v for f, v in edge.items() if label[f] == "clean"]
    bad = [v for f, v in edge.items() if label[f] == "garbled"]
    if clean and bad:
        doc["threshold_all"] = threshold_rule(clean, bad)
        print(f"\nthreshold rule on all: {doc['threshold_all']:.2f}")
    wrong = []
    for f, v in edge.items():
        c = [u for g, u in edge.items() if g != f and label[g] == "clean"]
        b = [u for g, u in edge.items() if g != f and label[g] == "garbled"]
        if not c or not b:
            continue
        t = threshold_rule(c, b)
        if (v > t) != (label[f] == "garbled"):
            wrong.append(f"{f} ({v:.2f} vs {t:.2f})")
    judged = sum(1 for f in edge if
                 any(label[g] == "clean" for g in edge if g != f) and
                 any(label[g] == "garbled" for g in edge if g != f))
    doc["leave_one_out"] = {"right": judged - len(wrong), "judged": judged, "wrong": wrong}
    print(f"leave-one-out: {judged - len(wrong)}/{judged} right; wrong: {', '.join(wrong) or 'none'}")
    cleans = [f for f in images if label[f] == "clean"]
    print(f"\nsynthetic corruptions of the {len(cleans)} clean images, share flagged garbled"
          " (absolute / vs the uncorrupted twin):")
    doc["synthetic"] = {}
    for kind in kinds:
        cells, rates = [], {}
        for strength in strengths:
            hits = [(health.assess(bad).garbled, health.assess(bad, images[f]).garbled)
                    for i, f in enumerate(cleans)
                    for bad in [corrupt(images[f], kind, strength, seed=i)]]
            absolute = float(np.mean([a for a, _ in hits])) if hits else float("nan")
            relative = float(np.mean([r for _, r in hits])) if hits else float("nan")
            rates[f"{strength:g}"] = {"absolute": absolute, "vs_twin": relative}
            cells.append(f"{strength:g}: {absolute:.2f} / {relative:.2f}")
        doc["synthetic"][kind] = rates
        print(f"  {kind:9} " + "   ".join(cells))
    print("\ntwin check (gate 3.0 image vs the learned-gate image of the same prompt):")
    doc["twins"], doc["unrelated_clean"] = {}, {}
    for f in sorted(images):
        twin = f.replace("gate_3.0_", "gate_learned_")
        if f.startswith("gate_3.0_") and twin in images:
            h = health.assess(images[f], images[twin])
            ssim = health.structure_similarity(images[f], images[twin])
            doc["twins"][f] = {"label": label[f], "ssim": float(ssim),
                               "garbled_score": float(h.garbled_score), "garbled": bool(h.garbled),
                               "blank": bool(h.blank)}
            print(f"  {f:18} {label[f]:8} ssim {ssim:.2f}"
                  f"  score {h.garbled_score:.2f} garbled {h.garbled} blank {h.blank}")
    if not doc["twins"]:
        print("  (no gate_3.0_N / gate_learned_N pairs in this folder)")
    for f in cleans:
        others = [g for g in cleans if g != f]
        if not others:
            continue
        ref = images[others[cleans.index(f) % len(others)]]
        h = health.assess(images[f], ref)
        doc["unrelated_clean"][f] = {"garbled_score": float(h.garbled_score),
                                     "garbled": bool(h.garbled)}
        print(f"  clean {f} vs an unrelated clean image: score {h.garbled_score:.2f}"
              f" garbled {h.garbled}")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, default=None,
                        help=f"labelled PNGs (default: {SEED} if present, else {SHIPPED})")
    parser.add_argument("--size", type=int, default=256, help="BOX-resize every image to this")
    parser.add_argument("--strengths", default=",".join(f"{s:g}" for s in STRENGTHS),
                        help="synthetic corruption strengths in (0, 1]")
    parser.add_argument("--kinds", default=",".join(KINDS), help="synthetic corruption kinds")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    folder = args.folder or (SEED if SEED.is_dir() else SHIPPED)
    if not folder.is_dir():
        parser.error(f"expected a folder of labelled PNGs, got {folder}")
    try:
        strengths = tuple(float(s) for s in args.strengths.split(",") if s.strip())
    except ValueError:
        parser.error(f"expected --strengths like 0.1,0.3,0.6, got {args.strengths!r}")
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if any(k not in KINDS for k in kinds) or any(not 0 < s <= 1 for s in strengths):
        parser.error(f"expected --kinds from {','.join(KINDS)} and --strengths in (0, 1]")
    if args.size < 16:
        parser.error(f"expected --size >= 16, got {args.size}")
    try:
        labels = read_labels(folder)
    except (ValueError, KeyError, csv.Error) as exc:
        parser.error(str(exc) if isinstance(exc, ValueError) else
                     f"expected labels.csv with file and label columns in {folder}, got {exc!r}")
    doc = study(folder, labels, args.size, strengths, kinds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

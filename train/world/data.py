"""Generate the shapes world's splits (layout JSONL + PNGs) and the ultralytics export.

    python -m gatebench.train.world.data --out assets-build/data [--yolo assets-build/yolo]
        [--train 20000 --val 1000 --test 500] [--size 32]

Seeds are fixed per split (``gatebench.world.shapes.DEFAULT_SPLITS``: train 1001, val 2002,
test 3003); the same arguments give byte-identical files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from gatebench.world.shapes import DEFAULT_SIZE, DEFAULT_SPLITS, export_yolo, generate_split


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--yolo", type=Path, default=None, help="also write an ultralytics dataset here")
    for split, (n, _seed) in DEFAULT_SPLITS.items():
        ap.add_argument(f"--{split}", type=int, default=n, help=f"images in {split} (default {n})")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE)
    args = ap.parse_args(argv)
    t0 = time.time()
    manifest = {"size": args.size, "splits": {}}
    for split, (_n, seed) in DEFAULT_SPLITS.items():
        n = getattr(args, split)
        path = generate_split(args.out, split, n, seed, args.size)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest["splits"][split] = {"n": n, "seed": seed, "jsonl": path.name, "jsonl_sha256": sha}
        print(f"{split}: {n} images, seed {seed}, {path} sha256 {sha[:16]}", flush=True)
    if args.yolo is not None:
        print(f"ultralytics dataset: {export_yolo(args.out, args.yolo)}", flush=True)
    manifest["wall_s"] = round(time.time() - t0, 1)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"wall {manifest['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Train and evaluate the shapes world's YOLO detector (ultralytics, CPU, seeded, resumable).

    python -m gatebench.train.world.detector train --data assets-build/yolo/data.yaml \
        --run-dir assets-build/detector [--scale n] [--imgsz 64] [--epochs 8] [--batch 64]
        [--seed 0] [--final gatebench/world/assets/world_yolo.pt]
    python -m gatebench.train.world.detector eval --weights gatebench/world/assets/world_yolo.pt \
        --dataset assets-build/data --split val [--imgsz 64]

The model is built from ``yolov8.yaml`` (never a downloaded .pt) with nc=12 from ``data.yaml``;
``--scale`` picks ultralytics' compound scale (n = yolov8n) or ``--depth/--width`` set a smaller
one (a yaml copy is written into the run directory). Re-running ``train`` with the same run
directory resumes from ``last.pt``. ``eval`` is the world's ceiling check: on ground-truth images,
the share of GT boxes matched one-to-one by a same-class detection with IoU > 0.5 (harness
settings: conf 0.25, NMS IoU 0.7, the training imgsz); the acceptance bar is >= 0.95.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

for _k, _v in {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "HF_HUB_OFFLINE": "1",
               "YOLO_VERBOSE": "true", "OMP_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)

CEILING_BAR = 0.95


def _threads(n: int) -> None:
    import torch  # noqa: PLC0415
    import ultralytics.utils.torch_utils as tu  # noqa: PLC0415

    torch.set_num_threads(n)
    tu.NUM_THREADS = n   # select_device() resets torch threads to this on CPU


def model_yaml(run_dir: Path, scale: str, depth: float | None, width: float | None) -> str:
    """``yolov8{scale}.yaml``, or a copy of yolov8.yaml with a custom depth/width multiple."""
    if depth is None and width is None:
        return f"yolov8{scale}.yaml"
    import yaml  # noqa: PLC0415
    from ultralytics.utils import ROOT  # noqa: PLC0415

    cfg = yaml.safe_load((ROOT / "cfg/models/v8/yolov8.yaml").read_text())
    d0, w0, mc = cfg["scales"][scale]
    cfg.pop("scales")
    cfg["depth_multiple"] = depth if depth is not None else d0
    cfg["width_multiple"] = width if width is not None else w0
    cfg["max_channels"] = mc
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"yolov8-d{cfg['depth_multiple']}-w{cfg['width_multiple']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def train(args: argparse.Namespace) -> dict:
    from ultralytics import YOLO  # noqa: PLC0415

    _threads(args.threads)
    run_dir = args.run_dir.resolve()
    last = run_dir / "train" / "weights" / "last.pt"
    best = run_dir / "train" / "weights" / "best.pt"
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("done"):
        print(f"training already finished: {best}", flush=True)
    else:
        t0 = time.time()
        if last.is_file():
            print(f"resuming from {last}", flush=True)
            YOLO(str(last)).train(resume=True, device="cpu", workers=args.workers)
        else:
            cfg = model_yaml(run_dir, args.scale, args.depth, args.width)
            model = YOLO(cfg)
            model.train(
                data=str(args.data.resolve()), epochs=args.epochs, imgsz=args.imgsz,
                batch=args.batch, device="cpu", workers=args.workers, seed=args.seed,
                deterministic=True, project=str(run_dir), name="train", exist_ok=True,
                pretrained=False, amp=False, plots=False, cache=args.cache, patience=100,
                optimizer=args.optimizer, lr0=args.lr0, cos_lr=True, close_mosaic=0,
                warmup_epochs=args.warmup_epochs, fraction=args.fraction,
                # augmentation: never change hue (colour is the class); flips only left-right
                # (the triangle points up); no mosaic (cut shapes would be mislabelled).
                hsv_h=0.0, hsv_s=0.2, hsv_v=0.2, degrees=0.0, translate=0.1, scale=0.25,
                shear=0.0, perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=0.0, mixup=0.0,
                erasing=0.0, auto_augment=None, val=True)
        state["train_wall_s"] = round(state.get("train_wall_s", 0.0) + time.time() - t0, 1)
        state["done"] = True
        state_path.write_text(json.dumps(state, indent=1) + "\n")
    if args.final is not None:
        args.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, args.final)
        print(f"copied {best} -> {args.final} ({args.final.stat().st_size} bytes)", flush=True)
    state["best_pt_bytes"] = best.stat().st_size
    state_path.write_text(json.dumps(state, indent=1) + "\n")
    return state


def _match_rate(gt_rows: list[dict], dets: list[list[tuple]], iou: float = 0.5) -> dict:
    """GT boxes matched one-to-one (same class, IoU > ``iou``): gatebench's matcher."""
    from gatebench.metrics.matching import match_boxes  # noqa: PLC0415
    n_gt = n_matched = n_img_all = 0
    per_class: dict[str, list[int]] = {}
    for row, det in zip(gt_rows, dets, strict=True):
        gt_boxes = [o["bbox"] for o in row["objects"]]
        gt_labels = [o["name_en"] for o in row["objects"]]
        recs = match_boxes(gt_boxes, gt_labels, [d[0] for d in det], [d[1] for d in det],
                           [d[2] for d in det], iou_threshold=iou)
        m = [bool(r.matched) for r in recs]
        n_gt += len(m)
        n_matched += sum(m)
        n_img_all += all(m)
        for lab, ok in zip(gt_labels, m, strict=True):
            per_class.setdefault(lab, [0, 0])
            per_class[lab][0] += ok
            per_class[lab][1] += 1
    return {"n_images": len(gt_rows), "n_gt": n_gt, "n_matched": n_matched,
            "match_rate": n_matched / max(n_gt, 1), "all_matched_rate": n_img_all / max(len(gt_rows), 1),
            "per_class": {k: round(v[0] / v[1], 4) for k, v in sorted(per_class.items())}}


def evaluate(weights: Path, dataset: Path, split: str, imgsz: int, conf: float = 0.25,
             nms_iou: float = 0.7, batch: int = 64, limit: int | None = None,
             threads: int = 1) -> dict:
    """The ceiling check on ground-truth images of ``split``."""
    from ultralytics import YOLO  # noqa: PLC0415

    from gatebench.world.shapes import read_split  # noqa: PLC0415

    _threads(threads)
    rows = read_split(dataset, split)[:limit]
    model: Any = YOLO(str(weights))   # ultralytics types each predict() item Results | Tensor
    t0 = time.time()
    dets: list[list[tuple]] = []
    paths = [str(dataset / "images" / split / r["image_path"]) for r in rows]
    for start in range(0, len(paths), batch):
        for res in model.predict(source=paths[start:start + batch], imgsz=imgsz, conf=conf,
                                 iou=nms_iou, device="cpu", verbose=False):
            b = res.boxes
            dets.append([(tuple(x), res.names[int(c)], float(s)) for x, c, s in
                         zip(b.xyxyn.numpy().tolist(), b.cls.numpy().tolist(),
                             b.conf.numpy().tolist(), strict=True)])
    out = _match_rate(rows, dets)
    out.update({"split": split, "imgsz": imgsz, "conf": conf, "nms_iou": nms_iou,
                "weights": str(weights), "weights_bytes": weights.stat().st_size,
                "predict_s": round(time.time() - t0, 1),
                "n_detections": sum(len(d) for d in dets), "bar": CEILING_BAR,
                "passes_bar": out["match_rate"] >= CEILING_BAR})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True, help="ultralytics data.yaml (export_yolo)")
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--scale", default="n")
    t.add_argument("--depth", type=float, default=None)
    t.add_argument("--width", type=float, default=None)
    t.add_argument("--imgsz", type=int, default=96)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr0", type=float, default=0.002)
    t.add_argument("--optimizer", default="AdamW")
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--fraction", type=float, default=1.0, help="share of train images used")
    t.add_argument("--cache", default="ram", help="ultralytics image cache: ram / disk / False")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--final", type=Path, default=None, help="copy best.pt here")
    t.add_argument("--eval-dataset", type=Path, default=None,
                   help="world dataset dir: run the ceiling check on its val split afterwards")
    e = sub.add_parser("eval")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--dataset", type=Path, required=True, help="world dataset dir (JSONL + images)")
    e.add_argument("--split", default="val")
    e.add_argument("--imgsz", type=int, default=96)
    e.add_argument("--conf", type=float, default=0.25)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out", type=Path, default=None, help="write the metrics JSON here")
    args = ap.parse_args(argv)
    if getattr(args, "cache", None) in ("False", "false", "none", ""):
        args.cache = False
    if args.cmd == "train":
        state = train(args)
        print(json.dumps(state), flush=True)
        if args.eval_dataset is not None:
            weights = args.final or (args.run_dir / "train" / "weights" / "best.pt")
            res = evaluate(weights, args.eval_dataset, "val", args.imgsz, threads=args.threads)
            (args.run_dir / "eval_val.json").write_text(json.dumps(res, indent=1) + "\n")
            print(json.dumps(res, indent=1), flush=True)
            return 0 if res["passes_bar"] else 1
        return 0
    res = evaluate(args.weights, args.dataset, args.split, args.imgsz, args.conf,
                   limit=args.limit, threads=args.threads)
    print(json.dumps(res, indent=1), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["passes_bar"] else 1


if __name__ == "__main__":
    sys.exit(main())

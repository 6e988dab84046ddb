"""Train the shapes world's small open_clip model contrastively (CPU, seeded, resumable).

    python -m gatebench.train.world.clip train --dataset assets-build/data \
        --run-dir assets-build/clip \
        [--epochs 10] [--batch 128] [--lr 1e-3] [--seed 0] \
        [--weights gatebench/world/assets/world_clip.safetensors \
         --config gatebench/world/assets/world_clip.json]
    python -m gatebench.train.world.clip eval --dataset assets-build/data --split val \
        --weights gatebench/world/assets/world_clip.safetensors \
        --config gatebench/world/assets/world_clip.json

Every train image is paired with BOTH its English and its Chinese caption: the loss is the mean
of two symmetric CLIP (InfoNCE) losses, image<->English and image<->Chinese. Identical captions in
a batch (one-object images repeat often) are all positives (soft targets), not false negatives.
The run directory keeps ``ckpt.pt`` (model, optimiser, step) every ``--ckpt-every`` steps;
re-running the same command resumes there. The data order of step s is a pure function of
(seed, s), so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gatebench.world.clip_model import (
    WorldClip,
    build_world_clip,
    load_world_clip,
    new_config,
    save_world_clip,
)
from gatebench.world.shapes import CLASS_BY_EN, COLOURS, caption_en, caption_zh, read_split


# -- data --------------------------------------------------------------------------------------
def load_images(dataset: Path, split: str, rows: list[dict], cache: Path | None = None) -> torch.Tensor:
    """uint8 (N, 3, S, S) of the split's PNGs (cached as .npy in the run directory)."""
    from PIL import Image  # noqa: PLC0415

    if cache is not None and cache.is_file():
        arr = np.load(cache)
        if arr.shape[0] == len(rows):
            return torch.from_numpy(arr)
    arrs = []
    for r in rows:
        with Image.open(dataset / "images" / split / r["image_path"]) as im:
            arrs.append(np.asarray(im.convert("RGB")))
    arr = np.stack(arrs).transpose(0, 3, 1, 2).copy()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, arr)
    return torch.from_numpy(arr)


def caption_ids(captions: list[str]) -> tuple[torch.Tensor, list[str]]:
    """Per-row id of the caption string (identical captions share an id) and the unique list."""
    uniq = sorted(set(captions))
    index = {c: i for i, c in enumerate(uniq)}
    return torch.tensor([index[c] for c in captions]), uniq


def _batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return perm[k * batch:(k + 1) * batch]


def _augment(x01: torch.Tensor, seed: int, step: int, noise: float) -> torch.Tensor:
    """Light Gaussian pixel noise on half the batch (generated images are never clean)."""
    if noise <= 0:
        return x01
    g = torch.Generator().manual_seed(seed * 7919 + step + 1)
    on = (torch.rand(x01.shape[0], 1, 1, 1, generator=g) < 0.5).float()
    return (x01 + on * noise * torch.randn(x01.shape, generator=g)).clamp(0, 1)


# -- loss ----------------------------------------------------------------------------------------
def clip_loss(img: torch.Tensor, txt: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with every same-caption pair a positive (normalised embeddings in)."""
    logits = scale * img @ txt.t()
    same = (ids[:, None] == ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# -- training ----------------------------------------------------------------------------------
def _lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train_clip(dataset: Path, run_dir: Path, *, epochs: float = 10, batch: int = 128,
               lr: float = 1e-3, weight_decay: float = 0.05, warmup: int = 100, seed: int = 0,
               noise: float = 0.03, ckpt_every: int = 100, log_every: int = 20,
               max_steps: int | None = None, limit: int | None = None, threads: int = 1,
               model_kwargs: dict[str, Any] | None = None, log=print) -> tuple[WorldClip, dict]:
    """Train (or resume) in ``run_dir``; returns the model and a state dict (steps, wall time)."""
    torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = read_split(dataset, "train")[:limit]
    images = load_images(dataset, "train", rows,
                         None if limit else run_dir / "train_images_u8.npy")
    size = images.shape[-1]
    cap_en = [r["caption_en"] for r in rows]
    cap_zh = [r["caption"] for r in rows]
    ids_en, _ = caption_ids(cap_en)
    ids_zh, _ = caption_ids(cap_zh)
    batch = min(batch, len(rows))
    per_epoch = len(rows) // batch
    total = max(1, int(round(epochs * per_epoch)))
    if max_steps is not None:
        total = min(total, max_steps)

    ckpt_path = run_dir / "ckpt.pt"
    torch.manual_seed(seed)
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        config = ckpt["config"]
    else:
        ckpt = None
        config = new_config(image_size=size, **(model_kwargs or {}))
    model, tokenizer, _ = build_world_clip(config)
    decay = [p for n, p in model.clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98),
                            eps=1e-6)
    state: dict[str, Any] = {"step": 0, "wall_s": 0.0, "total_steps": total, "seed": seed,
                             "batch": batch, "epochs": epochs, "lr": lr, "n_train": len(rows),
                             "log": []}
    if ckpt is not None:
        model.clip.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state.update(ckpt["state"])
        state["total_steps"] = total
        log(f"resumed at step {state['step']} / {total}")
    tok_en = tokenizer(cap_en)
    tok_zh = tokenizer(cap_zh)
    model.train()

    def save_ckpt() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.clip.state_dict(), "opt": opt.state_dict(), "state": state,
                    "config": config}, tmp)
        os.replace(tmp, ckpt_path)

    t_last = time.time()
    while state["step"] < total:
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = _lr(step, total, lr, warmup)
        idx = _batch_indices(len(rows), batch, seed, step)
        x = _augment(images[idx].float() / 255.0, seed, step, noise)
        img = model.image_features(x, normalize=True)
        t_en = model.encode_text(tok_en[idx], normalize=True)
        t_zh = model.encode_text(tok_zh[idx], normalize=True)
        scale = model.logit_scale.exp().clamp(max=100)
        loss = 0.5 * (clip_loss(img, t_en, ids_en[idx], scale) + clip_loss(img, t_zh, ids_zh[idx], scale))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.clip.logit_scale.clamp_(0, math.log(100))
        now = time.time()
        state["wall_s"] += now - t_last
        t_last = now
        state["step"] = step + 1
        if state["step"] % log_every == 0 or state["step"] == total:
            entry = {"step": state["step"], "loss": round(loss.item(), 4),
                     "scale": round(scale.item(), 2), "lr": round(opt.param_groups[0]["lr"], 6),
                     "wall_s": round(state["wall_s"], 1)}
            state["log"].append(entry)
            log(json.dumps(entry))
        if state["step"] % ckpt_every == 0 or state["step"] == total:
            save_ckpt()
    model.eval()
    return model, state


# -- evaluation --------------------------------------------------------------------------------
def _edit_caption(row: dict, rng: np.random.Generator) -> tuple[str, str]:
    """The captions with ONE object's colour changed (a hard negative for CLIP score)."""
    classes = [CLASS_BY_EN[o["name_en"]] for o in row["objects"]]
    k = int(rng.integers(len(classes)))
    colours = [c for c in COLOURS if c != classes[k].colour]
    classes[k] = CLASS_BY_EN[f"{colours[int(rng.integers(len(colours)))]} {classes[k].shape}"]
    return caption_en(classes), caption_zh(classes)


@torch.no_grad()
def evaluate_clip(model: WorldClip, tokenizer, dataset: Path, split: str = "val",
                  batch: int = 256, seed: int = 0, limit: int | None = None) -> dict[str, Any]:
    """Retrieval and cosine separation on ``split`` (per language and for both)."""
    model.eval()
    rows = read_split(dataset, split)[:limit]
    images = load_images(dataset, split, rows).float() / 255.0
    img = torch.cat([model.image_features(images[i:i + 512]) for i in range(0, len(rows), 512)])
    rng = np.random.default_rng(seed)
    edits = [_edit_caption(r, rng) for r in rows]
    out: dict[str, Any] = {"split": split, "n_images": len(rows)}
    for lang, key, e in (("en", "caption_en", 0), ("zh", "caption", 1)):
        caps = [r[key] for r in rows]
        ids, uniq = caption_ids(caps)
        txt_u = torch.cat([model.encode_text(tokenizer(uniq[i:i + 512]), normalize=True)
                           for i in range(0, len(uniq), 512)])
        sims = img @ txt_u.t()
        top1_all = (sims.argmax(1) == ids).float().mean().item()
        # within batches of ``batch`` images: retrieve among the batch's captions
        hits: float = 0
        for s in range(0, len(rows), batch):
            b = ids[s:s + batch]
            sb = img[s:s + batch] @ txt_u[b].t()
            hits += (b[sb.argmax(1)] == b).sum().item()
        matched = sims[torch.arange(len(rows)), ids]
        perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(len(rows)))
        differ = ids[perm] != ids
        mism = sims[torch.arange(len(rows)), ids[perm]]
        t_edit = model.encode_text(tokenizer([ed[e] for ed in edits]), normalize=True)
        cos_edit = (img * t_edit).sum(1)
        out[lang] = {
            "n_unique_captions": len(uniq),
            "top1_among_all_val_captions": round(top1_all, 4),
            f"top1_within_batch_{batch}": round(hits / len(rows), 4),
            "mean_cos_matched": round(matched.mean().item(), 4),
            "mean_cos_shuffled": round(mism[differ].mean().item(), 4),
            "matched_gt_shuffled_rate": round((matched > mism)[differ].float().mean().item(), 4),
            "mean_cos_one_colour_edited": round(cos_edit.mean().item(), 4),
            "matched_gt_edited_rate": round((matched > cos_edit).float().mean().item(), 4),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--dataset", type=Path, required=True)
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--epochs", type=float, default=10)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    t.add_argument("--weights", type=Path, default=None, help="write the fp16 safetensors here")
    t.add_argument("--config", type=Path, default=None, help="write the JSON config here")
    e = sub.add_parser("eval")
    e.add_argument("--dataset", type=Path, required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--weights", type=Path, required=True)
    e.add_argument("--config", type=Path, required=True)
    e.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "eval":
        model, tok, _ = load_world_clip(args.weights, args.config)
        print(json.dumps(evaluate_clip(model, tok, args.dataset, args.split), indent=1,
                         ensure_ascii=False))
        return 0
    log = lambda m: print(m, flush=True)  # noqa: E731
    model, state = train_clip(args.dataset, args.run_dir, epochs=args.epochs, batch=args.batch,
                              lr=args.lr, seed=args.seed, max_steps=args.max_steps, limit=args.limit,
                              threads=args.threads, log=log)
    t0 = time.time()
    metrics_fp32 = evaluate_clip(model, model_tokenizer(model), args.dataset, "val")
    result: dict[str, Any] = {"train": {k: v for k, v in state.items() if k != "log"},
                              "val_fp32": metrics_fp32}
    if args.weights is not None and args.config is not None:
        args.weights.parent.mkdir(parents=True, exist_ok=True)
        extra = {"training": {"script": "train/world/clip.py", "seed": args.seed,
                              "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
                              "steps": state["step"], "wall_s": round(state["wall_s"], 1),
                              "n_train": state["n_train"]}}
        save_world_clip(model, args.weights, args.config, extra=extra, fp16=True)
        m16, tok16, _ = load_world_clip(args.weights, args.config)
        result["val_fp16_file"] = evaluate_clip(m16, tok16, args.dataset, "val")
        result["weights_bytes"] = args.weights.stat().st_size
        result["config_bytes"] = args.config.stat().st_size
    result["eval_s"] = round(time.time() - t0, 1)
    (args.run_dir / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    print(json.dumps(result, indent=1, ensure_ascii=False), flush=True)
    return 0


def model_tokenizer(model: WorldClip):
    from gatebench.world.clip_model import WorldTokenizer  # noqa: PLC0415

    cfg = model.config["tokenizer"]
    return WorldTokenizer(cfg["vocab"], cfg["context_length"])


if __name__ == "__main__":
    sys.exit(main())

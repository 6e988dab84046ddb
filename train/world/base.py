"""Train the shapes world's text-conditioned pixel-space base diffusion model (no boxes).

Design (see train/world/README.md): 32x32 RGB, diffusers
UNet2DConditionModel with cross-attention at 8x8 only (attention at 16x16 costs ~2.7x per step
on a CPU), plus two CoordConv input channels (x, y ramps) so that image tokens know where they
are: without absolute position a box adapter has nothing to match box coordinates against, which
is the most likely reason placement was not learned in the earlier measurements. The text encoder
is a small CLIPTextModel over the world's own word-level vocabulary (Chinese and English), trained
jointly with the UNet; 10% of captions are dropped for classifier-free guidance. EMA weights are
what ships. Resumable: run it again with the same ``--out`` and it continues from the state.pt
it saves there every ``--save-every`` steps (there is no --resume flag: resuming is automatic).

    python -m gatebench.train.world.base --data assets-build/data --out assets-build/base \
        --minutes 70
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gatebench.world.clip_model import WorldTokenizer

TOKENIZER_MAX_LENGTH = 32


def world_tokenizer_fast(folder: Path):
    """The world's word-level vocabulary as a transformers fast tokenizer (saved to ``folder``)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    world = WorldTokenizer.default()
    vocab = {w: i for i, w in enumerate(world.vocab)}
    sot, eot, pad, unk = (world.vocab[i] for i in (world.sot_id, world.eot_id, world.pad_id,
                                                   world.unk_id))
    cjk = sorted((w for w in world.vocab[4:] if not w.isascii()), key=len, reverse=True)
    pattern = "|".join(cjk) + r"|[a-z]+|\d+|[^\sa-z\d]"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
        pre_tokenizers.Split(Regex(pattern), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", special_tokens=[(sot, vocab[sot]), (eot, vocab[eot])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=sot, eos_token=eot,
                                   unk_token=unk, pad_token=pad,
                                   model_max_length=TOKENIZER_MAX_LENGTH)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def build_models(vocab_size: int, pad_id: int, eot_id: int, sot_id: int):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=32, in_channels=5, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=TOKENIZER_MAX_LENGTH, pad_token_id=pad_id,
        bos_token_id=sot_id, eos_token_id=eot_id))
    return unet, text


def load_split(data: Path, split: str) -> tuple[torch.Tensor, list[str]]:
    rows = [json.loads(line) for line in (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    images = np.stack([np.asarray(Image.open(data / "images" / split / r["image_path"]).convert("RGB"))
                       for r in rows])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), [r["caption"] for r in rows]


def save_folder(out: Path, unet, text, tokenizer_dir: Path, scheduler) -> Path:
    """A diffusers-format GatebenchPixelPipeline folder (fp16 weights, loaded as fp32)."""
    import shutil
    out.mkdir(parents=True, exist_ok=True)
    unet.to(torch.float16).save_pretrained(out / "unet", safe_serialization=True)
    text.to(torch.float16).save_pretrained(out / "text_encoder", safe_serialization=True)
    unet.float(), text.float()
    shutil.copytree(tokenizer_dir, out / "tokenizer", dirs_exist_ok=True)
    scheduler.save_pretrained(out / "scheduler")
    index = {"_class_name": "GatebenchPixelPipeline", "_diffusers_version": "0.42.1",
             "gatebench_coord_channels": True,
             "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "scheduler": ["diffusers", type(scheduler).__name__]}
    (out / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("assets-build/data"))
    parser.add_argument("--out", type=Path, default=Path("assets-build/base"))
    parser.add_argument("--minutes", type=float, default=70.0)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (a GPU trains the base in minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler, DDPMScheduler

    tokenizer = world_tokenizer_fast(args.out / "tokenizer")
    device = torch.device(args.device)
    unet, text = build_models(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                              tokenizer.bos_token_id)
    unet.to(device), text.to(device)
    state_path = args.out / "state.pt"
    params = list(unet.parameters()) + list(text.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text)
    generator = torch.Generator().manual_seed(args.seed)
    step, elapsed = 0, 0.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True, map_location=device)
        unet.load_state_dict(state["unet"]), text.load_state_dict(state["text"])
        ema_unet.load_state_dict(state["ema_unet"]), ema_text.load_state_dict(state["ema_text"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed at step {step} ({elapsed / 60:.1f} min so far)", flush=True)
    images, captions = load_split(args.data, "train")
    with torch.no_grad():
        tokens = tokenizer(captions, padding="max_length", max_length=TOKENIZER_MAX_LENGTH,
                           truncation=True, return_tensors="pt").input_ids
        empty = tokenizer([""], padding="max_length", max_length=TOKENIZER_MAX_LENGTH,
                          return_tensors="pt").input_ids
    # Any: diffusers registers a scheduler's config and methods at run time (mypy cannot see them)
    noise_scheduler: Any = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                         beta_start=1e-4, beta_end=0.02, clip_sample=True)
    started = time.perf_counter() - elapsed
    log = open(args.out / "train_base.log", "a", encoding="utf-8")
    while step < args.max_steps and (time.perf_counter() - started) < args.minutes * 60:
        idx = torch.randint(0, len(images), (args.batch_size,), generator=generator)
        x0 = (images[idx].float() / 127.5 - 1).to(device)
        ids = tokens[idx].clone()
        drop = torch.rand(args.batch_size, generator=generator) < 0.1
        ids[drop] = empty
        ids = ids.to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        hidden = text(ids).last_hidden_state
        from gatebench.models.base import coord_grid
        model_in = torch.cat([noisy, coord_grid(len(noisy), 32, 32, noisy.device, noisy.dtype)], 1)
        pred = unet(model_in, t, encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        optimizer.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text)):
                for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        if step % 50 == 0:
            wall = time.perf_counter() - started
            log.write(json.dumps({"step": step, "loss": float(loss.detach()),
                                  "wall_s": round(wall, 1)}) + "\n")
            log.flush()
        if step % args.save_every == 0:
            torch.save({"unet": unet.state_dict(), "text": text.state_dict(),
                        "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(),
                        "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                        "step": step, "elapsed": time.perf_counter() - started},
                       state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
            scheduler = DDIMScheduler.from_config(noise_scheduler.config)
            save_folder(args.out / "model", copy.deepcopy(ema_unet).cpu(),
                        copy.deepcopy(ema_text).cpu(), args.out / "tokenizer", scheduler)
            print(f"step {step} loss {float(loss):.4f} {(time.perf_counter() - started) / 60:.1f} min",
                  flush=True)
    log.close()


if __name__ == "__main__":
    main()

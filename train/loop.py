"""The training loop: only adapter parameters train, on a frozen base; exactly resumable.

Every random draw (noise, timesteps, caption/phrase dropout, gate scales) comes from one CPU
``torch.Generator`` whose state is saved with the optimizer, LR schedule, step and data position,
so 10 steps + resume + 10 steps equals 20 steps. Multi-process training uses torchrun + DDP
(gloo on CPU, nccl on GPU); rank 0 writes logs and checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from gatebench.adapters.user import (
    AdapterSet,
    Grounding,
    apply_init,
    attn2_widths,
    inject,
    uses_phrases,
)
from gatebench.adapters.write_meter import WriteMeter
from gatebench.checkpoint import save_checkpoint, torch_load_safe
from gatebench.errors import CheckpointError
from gatebench.files import atomic_output, atomic_write_text
from gatebench.train.config import TrainConfig
from gatebench.train.data import LayoutImageDataset, epoch_order
from gatebench.train.resume import resume_source
from gatebench.watch.discover import STATUS_FILE


class GroundedUNet(nn.Module):
    """Frozen UNet + trainable adapters as one module, so DDP can sync the adapters' grads."""

    def __init__(self, unet: nn.Module, adapters: AdapterSet) -> None:
        super().__init__()
        self.unet = unet
        self.adapters = adapters
        self.injection = inject(unet, adapters)

    def forward(self, sample, timestep, hidden, grounding: Grounding, unet_kwargs: dict,
                meter: WriteMeter | None = None) -> torch.Tensor:
        """``meter``: where the adapter writes, read from this very forward (no extra pass)."""
        with self.injection.grounded(grounding), self.injection.measuring(meter):
            return self.unet(sample, timestep, encoder_hidden_states=hidden, **unet_kwargs).sample


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    micro_index: int = 0                 # next micro-batch within the epoch
    nonfinite_skipped: int = 0
    gate_history: list[list[float]] = field(default_factory=list)


WRITE_FIELDS = ("effect_in_boxes", "effect_lift", "box_attention_kappa", "effect_norm")


def write_summary(rows: list[dict]) -> dict[str, float]:
    """Mean of each write diagnostic over the rows where it was computed (absent: none was)."""
    out = {}
    for name in WRITE_FIELDS:
        values = [r[name] for r in rows if r.get(name) is not None]
        if values:
            out[name] = sum(values) / len(values)
    return out


def gate_stats(adapters: AdapterSet) -> dict[str, float]:
    raw = torch.cat([a.gated_attn.gate.detach().float().reshape(-1) for a in adapters.values()])
    return {"gate_mean": float(raw.mean()), "gate_std": float(raw.std(unbiased=False)),
            "gate_min": float(raw.min()), "gate_max": float(raw.max())}


class Logs:
    """train.log (the user's exact gate line), TensorBoard scalars and a JSONL log; rank 0 only."""

    def __init__(self, config: TrainConfig, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        config.output_dir.mkdir(parents=True, exist_ok=True)
        self.text = open(config.output_dir / "train.log", "a", encoding="utf-8")
        self.jsonl = open(config.output_dir / "train_log.jsonl", "a", encoding="utf-8")
        self.gate_lines = config.log_gate_stats
        if config.log_tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(config.output_dir / "tensorboard"))

    def line(self, message: str) -> None:
        if self.enabled:
            self.text.write(f"{datetime.now():%Y-%m-%d %H:%M:%S} - INFO - {message}\n")
            self.text.flush()

    def record(self, step: int, epoch: int, loss: float, lr: float, stats: dict[str, float],
               per_width: dict[str, float], skipped: int, writes: dict[str, float]) -> None:
        """``writes``: the step's write diagnostics (``write_summary``), logged beside the gates
        so a run shows whether control grows, not only whether the gate does."""
        if not self.enabled:
            return
        if self.gate_lines:
            self.line(f"Step {step}: Gate stats - mean: {stats['gate_mean']:.6g}, std: "
                      f"{stats['gate_std']:.6g}, min: {stats['gate_min']:.6g}, max: "
                      f"{stats['gate_max']:.6g}")
        self.line(f"Step {step}: loss: {loss:.6g}, lr: {lr:.3g}")
        self.jsonl.write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "lr": lr, **stats,
                                     **writes, "gates": per_width,
                                     "nonfinite_skipped": skipped}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for key, value in {"loss": loss, "lr": lr, **stats, **writes}.items():
                self.tb.add_scalar(f"train/{key}", value, step)
            for name, value in per_width.items():
                self.tb.add_scalar(f"train/gate/{name}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.text.close()
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        from gatebench.models import load_base_model

        self.config = config
        # the file --resume FILE / RUN_DIR continues from, found before any model loads
        self.resumed_from = resume_source(config.resume) if config.resume is not None else None
        self.rank, self.world, local_rank = _distributed()
        if config.device == "auto":
            self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        self.base = load_base_model(config.base_model, device=self.device, dtype=torch.float32)
        self.base.unet.requires_grad_(False)
        widths = sorted(set(attn2_widths(self.base.unet).values()))
        torch.manual_seed(config.seed)
        self.adapters = AdapterSet(widths, self.base.phrase_dim, query=config.adapter_query,
                                   null_slot=config.null_slot, box_mask=config.box_mask,
                                   fourier=config.fourier, text_proj=config.text_proj,
                                   phrases=config.phrases)
        self.uses_phrases = uses_phrases(self.adapters.config, self.base.kind)
        apply_init(self.adapters, config.init, config.gate_init_value)
        self.gate_init = float(self.adapters[f"dim_{widths[0]}"].gated_attn.gate.detach())
        self.adapters.to(self.device)
        if config.freeze_gate:
            for gate in self.adapters.gates().values():
                gate.requires_grad_(False)
        for adapter in self.adapters.values():
            if adapter.skips_text_proj(self.base.phrase_dim) or not self.uses_phrases:
                adapter.text_proj.requires_grad_(False)   # unused: it stays as initialised
        self.model: nn.Module = GroundedUNet(self.base.unet, self.adapters)
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.adapters.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(1, config.warmup_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.noise_scheduler = self.base.make_scheduler("DDPMScheduler")
        self.resolution = config.resolution or self.base.default_size[0]
        self.data = LayoutImageDataset(config.mixed_data, config.image_dir, self.resolution,
                                       min_area=config.min_area, max_area=config.max_area,
                                       min_side=config.min_side, max_boxes=config.max_boxes)
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + self.rank)
        self.state = TrainState()
        self._phrase_cache: dict[str, torch.Tensor] = {}
        self.scaler = torch.amp.GradScaler(enabled=config.mixed_precision == "fp16"
                                           and self.device.type == "cuda")
        if self.resumed_from is not None:
            self._resume(self.resumed_from)

    # -- data -----------------------------------------------------------------------------
    def _phrases(self, names: list[str]) -> torch.Tensor:
        todo = [n for n in dict.fromkeys(names) if n not in self._phrase_cache]
        if todo:
            vectors = self.base.encode_phrases(todo).float().cpu()
            self._phrase_cache.update(zip(todo, vectors, strict=True))
        return torch.stack([self._phrase_cache[n] for n in names])

    def _micro_batches(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.data), self.config.seed, epoch, self.rank, self.world)
        size = self.config.batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _loss(self, indices: list[int], writes: list[dict] | None = None) -> torch.Tensor:
        """The step's loss; ``writes``: when given, each grounded row's write diagnostics are
        appended to it (read from this forward's own hooks)."""
        c, g, base = self.config, self.generator, self.base
        examples = [self.data[i] for i in indices]
        b = len(examples)
        with torch.no_grad():
            latents = base.encode_images(torch.stack([e.image for e in examples]).to(self.device))
        noise = torch.randn(latents.shape, generator=g).to(self.device, latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (b,), generator=g).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        kind = self.noise_scheduler.config.prediction_type
        target = noise if kind == "epsilon" else (
            self.noise_scheduler.get_velocity(latents, noise, timesteps) if kind == "v_prediction"
            else latents)
        drop_caption = torch.rand(b, generator=g) < c.caption_dropout
        with torch.no_grad():
            emb = base.encode_prompts(["" if d else e.layout.caption
                                       for d, e in zip(drop_caption.tolist(), examples,
                                                       strict=True)])
        n = max(len(e.layout.objects) for e in examples)
        boxes, phrases, mask = torch.zeros(b, n, 4), torch.zeros(b, n, base.phrase_dim), torch.zeros(b, n)
        for row, e in enumerate(examples):
            objs = e.layout.objects
            boxes[row, :len(objs)] = torch.tensor([o.bbox for o in objs])
            phrases[row, :len(objs)] = self._phrases([o.name for o in objs])
            mask[row, :len(objs)] = 1.0
        keep_phrase = (torch.rand(b, n, generator=g) >= c.phrase_dropout).float()
        phrases = phrases * keep_phrase.unsqueeze(-1)          # zero whole boxes' phrase vectors
        # the user's trainer draws one s per step for the whole batch; per-sample is a variant
        draws = torch.rand(1 if c.scale_sampling == "per-step" else b, generator=g).expand(b)
        scale = c.scale_min + (c.scale_max - c.scale_min) * draws
        if c.uncond_boxes == "off":
            scale = torch.where(drop_caption, torch.zeros_like(scale), scale)
        grounding = Grounding(boxes.to(self.device),
                              phrases.to(self.device) if self.uses_phrases else None,
                              mask.to(self.device), scale.to(self.device))
        kwargs = base.unet_kwargs(emb, self.resolution, self.resolution)
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(c.mixed_precision)
        meter = WriteMeter(b, n, self.device) if writes is not None else None
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            pred = self.model(noisy, timesteps, emb.hidden, grounding, kwargs, meter)
        if meter is not None and writes is not None:    # rows at scale 0 say nothing
            rows = [r for r in range(b) if float(scale[r]) > 0]
            writes.extend(meter.results(rows, grounding.mask) if rows else [])
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, name: str) -> Path | None:
        if self.rank != 0:
            return None
        s, c = self.state, self.config
        resume = {"step": s.step, "epoch": s.epoch, "micro_index": s.micro_index,
                  "nonfinite_skipped": s.nonfinite_skipped,
                  "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                  "generator": self.generator.get_state(), "scaler": self.scaler.state_dict()}
        return save_checkpoint(
            c.output_dir / name, self.adapters.state_dict(), family="user",
            adapter_config=self.adapters.config, base_model=self.base.identity(),
            training={"step": s.step, "epoch": s.epoch, "init_scheme": c.init,
                      "gate_init": self.gate_init, "scale_min": c.scale_min,
                      "scale_max": c.scale_max, "scale_sampling": c.scale_sampling,
                      "uncond_boxes": c.uncond_boxes, "data_sha256": self.data.data_sha256,
                      "gate_history": s.gate_history, "nonfinite_skipped": s.nonfinite_skipped,
                      "config": c.to_dict()},
            extra={"resume": resume})

    def export_user_file(self, name: str = "spatial_adapter_final.pt") -> Path | None:
        """The user's own file format (a bare ``torch.save(state_dict)``), written only when the
        forward IS the user's: loaded by their code (or by gatebench as a bare user file) it then
        means what it meant here. A variant's weights would be misread there, so none is written."""
        if self.rank != 0 or "variants" in self.adapters.config["reference"]:
            return None
        path = self.config.output_dir / name
        with atomic_output(path) as tmp:
            torch.save({k: v.detach().cpu().contiguous()
                        for k, v in self.adapters.state_dict().items()}, tmp)
        return path

    def write_status(self, state: str, final: Path | None = None) -> None:
        """``training_status.json`` for `gatebench watch`: every checkpoint here is renamed into
        place whole (``atomic_writes``: no settle interval needed), and ``complete`` with the
        final file's name once training ended (follow mode then ends after evaluating it)."""
        if self.rank != 0:
            return
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config.output_dir / STATUS_FILE, json.dumps(
            {"state": state, "atomic_writes": True, "step": self.state.step,
             "final": final.name if final is not None else None}))

    def _resume(self, path: Path) -> None:
        obj = torch_load_safe(Path(path), mmap=False)
        if not isinstance(obj, dict) or "resume" not in obj:
            raise CheckpointError("expected a gatebench training checkpoint with resume state, got "
                                  "a file without it", path=path)
        self.adapters.load_state_dict(obj["state_dict"])
        r = obj["resume"]
        self.optimizer.load_state_dict(r["optimizer"])
        self.schedule.load_state_dict(r["schedule"])
        self.generator.set_state(r["generator"])
        self.scaler.load_state_dict(r["scaler"])
        self.state = TrainState(r["step"], r["epoch"], r["micro_index"], r["nonfinite_skipped"],
                                [list(row) for row in obj["training"].get("gate_history", [])])

    # -- loop -----------------------------------------------------------------------------
    def total_steps(self) -> int:
        per_epoch = math.ceil(len(self._micro_batches(0)) / self.config.grad_accum)
        total = per_epoch * self.config.epochs
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def run(self, progress: Callable[[int, int, float, float], None] | None = None) -> TrainState:
        """Train to the end; ``progress(step, total, loss, gate_mean)`` after each logged step."""
        c, s = self.config, self.state
        logs = Logs(c, enabled=self.rank == 0)
        total = self.total_steps()
        logs.line(f"Training {c.init} init on {c.base_model}: {len(self.data)} layouts, "
                  f"{total} steps, world size {self.world}")
        started = time.perf_counter()
        self.write_status("running")
        try:
            while s.step < total and s.epoch < c.epochs:
                batches = self._micro_batches(s.epoch)
                while s.micro_index < len(batches) and s.step < total:
                    group = batches[s.micro_index:s.micro_index + c.grad_accum]
                    self.optimizer.zero_grad(set_to_none=True)
                    losses: list[float] = []
                    logged = (s.step + 1) % c.log_every == 0 or s.step + 1 == total
                    writes: list[dict] = []
                    for indices in group:
                        loss = self._loss(indices, writes if logged else None)
                        losses.append(float(loss.detach()))
                        if math.isfinite(losses[-1]):
                            self.scaler.scale(loss / len(group)).backward()
                    s.micro_index += len(group)
                    if not all(math.isfinite(v) for v in losses):
                        s.nonfinite_skipped += 1                  # counted, never silent
                        logs.line(f"Step {s.step + 1}: non-finite loss skipped "
                                  f"({s.nonfinite_skipped} so far)")
                        continue
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.adapters.parameters(), c.max_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.schedule.step()
                    s.step += 1
                    mean_loss = sum(losses) / len(losses)
                    if self.world > 1:  # log the global batch's loss, not rank 0's share
                        total_loss = torch.tensor([mean_loss], device=self.device)
                        torch.distributed.all_reduce(total_loss)
                        mean_loss = float(total_loss) / self.world
                    stats = gate_stats(self.adapters)
                    if s.step % c.log_every == 0 or s.step == total:
                        s.gate_history.append([s.step, stats["gate_mean"], stats["gate_std"],
                                               stats["gate_min"], stats["gate_max"]])
                        per_width = {k: float(v.detach()) for k, v in self.adapters.gates().items()}
                        lr = float(self.schedule.get_last_lr()[0])
                        logs.record(s.step, s.epoch, mean_loss, lr, stats, per_width,
                                    s.nonfinite_skipped, write_summary(writes))
                    if progress is not None:
                        progress(s.step, total, mean_loss, stats["gate_mean"])
                    if c.save_every and s.step % c.save_every == 0:
                        self.save(f"step_{s.step}.pt")
                if s.micro_index >= len(batches):
                    s.epoch += 1
                    s.micro_index = 0
                    if c.save_epoch:
                        self.save(f"epoch_{s.epoch}.pt")
            final = self.save("final.pt")
            bare = self.export_user_file()
            if bare is not None:
                logs.line(f"Wrote {bare.name}: the bare state dict the user's own code loads")
            logs.line(f"Done: {s.step} steps in {time.perf_counter() - started:.1f} s, "
                      f"{s.nonfinite_skipped} non-finite steps skipped, final {final}")
            self.write_status("complete", final)
        finally:
            logs.close()
        return s

"""The watch's TensorBoard points, beside training's: ``<tensorboard>/gatebench/``.

Why a run folder of its own: TensorBoard misbehaves with several writers in one folder (the
trainer's and ours), and a folder of its own shows as its own run beside ``train/*``. Scalars go
under ``eval/`` at the checkpoint's TRAINING step, so ``tensorboard --logdir ./outputs/tensorboard``
draws ``eval/iou50_rate/scale_1`` on the same axis as ``train/gate_mean`` and ``train/loss``:

* ``eval/<metric>/scale_<s>``: each headline metric (and effect_lift) at each gate scale; its
  CI bounds as tags of their own (``.../ci_low``, ``.../ci_high``);
* ``eval/samples``: the checkpoint's sample grid (run's report grid: one row per gate scale,
  the where-it-wrote row);
* ``eval/findings``: the findings raised at that checkpoint, as text.

A rerun adds no duplicate points: the (tag, step) pairs already in the folder are read back
first (tensorboard's own EventAccumulator) and skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from gatebench.metrics.spec import HEADLINE
from gatebench.render.escape import md_text
from gatebench.watch.state import Entry

SUBFOLDER = "gatebench"
# the headline metrics, and effect_lift: whether control grows where no detector is configured
METRICS = (*HEADLINE, *(m for m in ("effect_lift",) if m not in HEADLINE))


def default_folder(run_dir: Path) -> Path | None:
    """The run's own TensorBoard folder: the first folder under it holding event files (the
    watch's own subfolder excluded), e.g. ``outputs/tensorboard``."""
    found = sorted({p.parent for p in run_dir.rglob("events.out.tfevents*")
                    if SUBFOLDER not in p.relative_to(run_dir).parts})
    return found[0] if found else None


def written_points(folder: Path) -> set[tuple[str, int]]:
    """(tag, step) of every scalar, image and text already in ``folder``."""
    if not any(folder.glob("events.out.tfevents*")):
        return set()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: PLC0415

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0,
                                                        "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    points = {(t, int(e.step)) for t in tags.get("scalars", []) for e in acc.Scalars(t)}
    points |= {(t, int(e.step)) for t in tags.get("images", []) for e in acc.Images(t)}
    points |= {(t, int(e.step)) for t in tags.get("tensors", []) for e in acc.Tensors(t)}
    return points


def scalar_points(entry: Entry) -> list[tuple[str, float]]:
    """(tag, value) of one checkpoint: each headline metric per gate scale, with its CI."""
    out = []
    for scale, metrics in sorted((entry.headline or {}).items(), key=lambda kv: float(kv[0])):
        for name in METRICS:
            m = metrics.get(name) or {}
            for part, key in (("", "value"), ("/ci_low", "ci_low"), ("/ci_high", "ci_high")):
                value = m.get(key)
                if value is not None:
                    out.append((f"eval/{name}/scale_{scale}{part}", float(value)))
    return out


class EvalBoard:
    """Writes one checkpoint's points at a time; opened lazily, closed by ``close``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / SUBFOLDER
        self._writer: Any = None
        self._done: set[tuple[str, int]] | None = None

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

            self.folder.mkdir(parents=True, exist_ok=True)
            self._done = written_points(self.folder)
            self._writer = SummaryWriter(str(self.folder))
        return self._writer

    def write(self, entry: Entry, grid: Path | None, findings: Iterable[str]) -> int:
        """The checkpoint's scalars, grid and findings at ``entry.tb_step``; returns how many
        points were new (0 on a rerun)."""
        if entry.tb_step is None:
            return 0
        writer = self._open()
        done, step, added = self._done, int(entry.tb_step), 0
        assert done is not None
        for tag, value in scalar_points(entry):
            if (tag, step) not in done:
                writer.add_scalar(tag, value, step)
                done.add((tag, step))
                added += 1
        if grid is not None and ("eval/samples", step) not in done:
            import numpy as np  # noqa: PLC0415
            from PIL import Image  # noqa: PLC0415

            with Image.open(grid) as image:
                writer.add_image("eval/samples", np.asarray(image.convert("RGB")), step,
                                 dataformats="HWC")
            done.add(("eval/samples", step))
            added += 1
        text = "\n\n".join(md_text(f) for f in findings)    # TensorBoard renders Markdown
        if text and ("eval/findings/text_summary", step) not in done:
            writer.add_text("eval/findings", f"**{md_text(entry.name)}**\n\n{text}", step)
            done.add(("eval/findings/text_summary", step))
            added += 1
        writer.flush()
        return added

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

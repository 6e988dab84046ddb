"""One checkpoint of a watched run through `gatebench run`'s own pipeline (run.run_evaluation).

Why through run and not a pipeline of its own: each checkpoint's results must be a normal run
folder (results.json + samples.jsonl + report.md) that `report` and `compare` read, decided by
the same verdict rule. What a watch shares across checkpoints:

* the models, loaded ONCE: base, detector, CLIP, Inception (run_evaluation takes them loaded);
  only the adapter changes between checkpoints;
* one image cache (RunOptions.images_root): the gate-0 images are made once per watch, and a
  checkpoint costs only its non-zero gate scales;
* the gate-0 set's scores (``zero_scores``): scored once per watch;
* the protocol: every checkpoint gets the same layouts and seeds, so the trajectory is paired.

report.md and its plots are not rendered per checkpoint (seconds of matplotlib each on a CPU):
`gatebench report OUT/checkpoints/<name>/results.json` renders them from the folder alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from gatebench.errors import ModelFileError
from gatebench.protocol import Protocol
from gatebench.run import ProgressBar, RunOptions, run_evaluation
from gatebench.watch.state import Entry

if TYPE_CHECKING:
    from gatebench.metrics.evalmodels import EvalModels
    from gatebench.models.base import BaseModel
    from gatebench.score_run import ZeroScores


@dataclass(frozen=True)
class WatchOptions:
    """The watch's own choices (the protocol holds everything that changes the numbers)."""

    out: Path
    device: str = "auto"
    batch_size: int | None = None
    command: str = ""
    settle_s: float = 10.0
    unreadable_after_s: float = 60.0
    poll_s: float = 30.0
    once: bool = False
    idle_timeout_s: float | None = None   # follow mode ends when no file changes this long
    tensorboard: Path | None = None   # the TensorBoard folder; <it>/gatebench gets the points


@dataclass
class Models:
    """The models a watch loads once (None until the first checkpoint needs them)."""

    base: BaseModel | None = None
    eval_models: EvalModels | None = None
    zero_scores: ZeroScores = field(default_factory=dict)
    load_s: float = 0.0


def run_folder(entry: Entry) -> str:
    """A checkpoint content's run folder under OUT/checkpoints: its file name and content hash,
    so a rewritten file (a restarted run) gets a folder of its own."""
    stem = Path(entry.path).stem
    return f"checkpoints/{stem}-{(entry.sha256 or 'unhashed')[:12]}"


class Evaluator:
    """Evaluates checkpoints one at a time with the models loaded once."""

    def __init__(self, protocol: Protocol, options: WatchOptions,
                 progress_factory: Callable[[int], ProgressBar] | None = None) -> None:
        self.protocol, self.options = protocol, options
        self.progress_factory = progress_factory
        self.models = Models()

    def load(self) -> None:
        """Base and evaluation models, once per watch (before the first checkpoint)."""
        if self.models.base is not None:
            return
        from gatebench.layouts import select_layouts  # noqa: PLC0415
        from gatebench.metrics.evalmodels import load_eval_models  # noqa: PLC0415
        from gatebench.models import load_base_model  # noqa: PLC0415
        from gatebench.models.device import resolve_device, resolve_dtype  # noqa: PLC0415

        if not self.protocol.models.base_model:
            raise ModelFileError("expected [models] base_model (a local diffusers folder), got "
                                 "none", path=self.protocol.source)
        began = time.perf_counter()
        g = self.protocol.generation
        device = resolve_device(self.options.device if self.options.device != "auto"
                                else g.device)
        layouts, _ = select_layouts(self.protocol)
        self.models.base = load_base_model(self.protocol.models.base_model, device=device,
                                           dtype=resolve_dtype(g.dtype, device))
        self.models.eval_models = load_eval_models(self.protocol, device=device, layouts=layouts)
        self.models.load_s = time.perf_counter() - began

    def evaluate(self, entry: Entry) -> dict[str, Any]:
        """``entry``'s checkpoint in its own run folder; returns its results.json document."""
        self.load()
        folder = self.options.out / run_folder(entry)
        options = RunOptions(out_dir=folder, device=self.options.device,
                             batch_size=self.options.batch_size, command=self.options.command,
                             images_root=self.options.out / "images", report=False)
        result = run_evaluation([Path(entry.path)], self.protocol, options,
                                eval_models=self.models.eval_models, base=self.models.base,
                                progress_factory=self.progress_factory,
                                zero_scores=self.models.zero_scores)
        write_grid(result.results, result.samples, folder)
        return result.results


GRID = "grid.png"


def write_grid(results: dict[str, Any], samples: Any, folder: Path) -> Path | None:
    """The checkpoint's sample grid (report's own, PIL: one row per gate scale and the
    where-it-wrote row) for TensorBoard; the full report is `gatebench report`'s to render."""
    from gatebench.render.grids import sample_grid  # noqa: PLC0415
    from gatebench.rundir.saved import label_map  # noqa: PLC0415

    for path, label in label_map(results).items():
        png, _, _ = sample_grid(samples, path, folder, folder / GRID, label=label)
        return png
    return None


def headline(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{gate scale: {metric: {value, ci_low, ci_high}}} of a one-checkpoint run's rows."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in results.get("results", []):
        metrics = out.setdefault(f"{float(row['gate_scale']):g}", {})
        for name, m in (row.get("metrics") or {}).items():
            metrics[name] = {k: m.get(k) for k in ("value", "ci_low", "ci_high", "n")}
    return out

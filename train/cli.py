"""`gatebench train` / `python -m gatebench train`: the user's flags (README "Training")."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from gatebench.render.escape import rich_text as escape  # markup literal, no control codes
from gatebench.train.config import FREEZE_GATE_WARNING, GATE_INIT_WARNING, TrainConfig

P = click.Path(path_type=Path)


@click.command("train")
@click.option("--mixed-data", type=P, required=True, help="Layout JSONL (the user's format).")
@click.option("--base-model", "--kolors-model", "base_model", type=P, required=True,
              help="Local diffusers-format base model folder (frozen).")
@click.option("--output-dir", type=P, required=True)
@click.option("--image-dir", type=P, default=None, help="Folder the JSONL's image_path is relative to.")
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--max-steps", type=int, default=None)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--warmup-steps", type=int, default=100, show_default=True)
@click.option("--phrase-dropout", type=float, default=0.1, show_default=True)
@click.option("--caption-dropout", type=float, default=0.1, show_default=True,
              help="Share of samples trained with caption '' (for CFG).")
@click.option("--uncond-boxes", type=click.Choice(["grounded", "off"]), default="grounded",
              show_default=True, help="A caption-dropped sample keeps its boxes (grounded, as the "
              "user's inference grounds both CFG halves) or trains with the adapter off.")
@click.option("--save-epoch", is_flag=True, help="Write epoch_{N}.pt after every epoch.")
@click.option("--save-every", type=int, default=None, help="Write step_{N}.pt every N steps.")
@click.option("--log-every", type=int, default=100, show_default=True)
@click.option("--log-gate-stats", is_flag=True, help="Write the 'Step N: Gate stats - ...' lines.")
@click.option("--log-tensorboard", is_flag=True, help="TensorBoard scalars under OUTPUT_DIR/tensorboard.")
@click.option("--min-area", type=float, default=0.02, show_default=True)
@click.option("--min-side", type=float, default=0.03, show_default=True)
@click.option("--scale-min", type=float, default=1.0, show_default=True,
              help="Training-time gate scale range (recorded; the harness flags extrapolation).")
@click.option("--scale-max", type=float, default=1.0, show_default=True)
@click.option("--init", type=click.Choice(["gligen", "zero-out", "legacy", "deadlock"]),
              default="gligen", show_default=True,
              help="gligen: gate 0, to_out normal; zero-out: to_out 0, gate 0.1; legacy: gate 3.0 "
                   "(reproduces the collapse); deadlock: both 0 (reproduces the deadlock).")
@click.option("--scale-sampling", type=click.Choice(["per-step", "per-sample"]),
              default="per-step", show_default=True, help="One gate scale s ~ U[scale-min, "
              "scale-max] per step for the whole batch (the user's trainer) or one per sample.")
@click.option("--adapter-query", type=click.Choice(["attn2_output", "stream"]),
              default="attn2_output", show_default=True, help="What the adapter's queries read: "
              "attn2's own output (the user's adapter) or the block's hidden states after the "
              "cross-attention residual (stream, a recorded variant).")
@click.option("--fourier", type=click.Choice(["user", "nerf"]), default="user", show_default=True,
              help="Box features: sin/cos(2*pi*f*c) (the user's) or NeRF octaves (variant).")
@click.option("--text-proj", type=click.Choice(["user", "always"]), default="user",
              show_default=True, help="user: skip text_proj when the phrase width equals the "
              "adapter width (the user's code); always: apply it (variant).")
@click.option("--null-slot", is_flag=True, help="Add a zero key/value the image tokens may attend "
              "to instead of a box (needed to localise single-box layouts; recorded).")
@click.option("--box-mask", is_flag=True, help="Region attention: each image token attends only "
              "to the boxes containing it (learns what to draw, not where; recorded).")
@click.option("--phrases", type=click.Choice(["kolors-only", "always"]), default="kolors-only",
              show_default=True, help="Phrase vectors only on a Kolors base (the user's code: "
              "elsewhere the boxes' position features alone) or on every base (variant).")
@click.option("--max-grad-norm", type=float, default=0.5, show_default=True,
              help="Gradient clipping (the user's trainer: 0.5).")
@click.option("--gate-init-value", type=float, default=None)
@click.option("--freeze-gate", is_flag=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", type=P, default=None, help="A checkpoint written by this trainer, or "
              "its run folder: the run's newest checkpoint with resume state (series order).")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no",
              show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--device", default="auto", show_default=True)
def train_command(**flags) -> None:
    """Train a spatial adapter on a frozen base model and write gatebench checkpoints.

    Multi-GPU: `torchrun --nproc_per_node K -m gatebench train ...` (DDP; rank 0 writes everything).
    """
    from gatebench.train.loop import Trainer

    err = Console(stderr=True)
    if flags["gate_init_value"] is not None:
        err.print(f"[yellow]warning:[/yellow] {GATE_INIT_WARNING}")
    if flags["freeze_gate"]:
        err.print(f"[yellow]warning:[/yellow] {FREEZE_GATE_WARNING}")
    config = TrainConfig(**flags)
    trainer = Trainer(config)
    console = Console(stderr=True)
    if trainer.resumed_from is not None and trainer.rank == 0:
        console.print(escape(f"resuming from {trainer.resumed_from} (step {trainer.state.step})"),
                      soft_wrap=True, highlight=False)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, disable=trainer.rank != 0) as bar:
        task = bar.add_task("training", total=trainer.total_steps(), completed=trainer.state.step)

        def progress(step: int, total: int, loss: float, gate: float) -> None:
            bar.update(task, completed=step,
                       description=f"training loss {loss:.4f} gate {gate:+.4f}")

        state = trainer.run(progress)
    if trainer.rank == 0:
        Console().print(f"trained {state.step} steps ({state.nonfinite_skipped} non-finite skipped); "
                        f"checkpoints in {config.output_dir}")


def main() -> None:
    from gatebench.render.console import quiet_model_libraries
    quiet_model_libraries()
    train_command(prog_name="python -m gatebench.train")

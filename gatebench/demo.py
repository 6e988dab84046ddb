"""`gatebench demo`: the whole harness on the embedded shapes world, on a CPU, in minutes.

It runs the real pipeline over the shipped checkpoints (a well-trained series, a legacy-init
series that collapses, a deadlocked one) and then checks that the harness told them apart — the
world's acceptance bar. Exit 0 only when every expectation held.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gatebench.checkpoint import inspect_checkpoint
from gatebench.errors import ModelFileError
from gatebench.files import atomic_write_text
from gatebench.gates import GateReport, analyse
from gatebench.protocol import ASSETS_DIR, load_protocol
from gatebench.readers.logs import read_logs
from gatebench.render.gates import plot_trajectory, render_findings, render_markdown
from gatebench.run import RunOptions, run_evaluation
from gatebench.rundir.saved import label_map, label_of, row_label

SERIES = ("good", "legacy", "deadlock")           # gates AND generation
GATES_ONLY_SERIES = ("gligen",)                   # the init comparison: gate trajectory only


@dataclass(frozen=True)
class Expectation:
    name: str
    expected: str
    observed: str
    ok: bool
    required: bool = True


def series_checkpoints(name: str, assets: Path = ASSETS_DIR) -> list[Path]:
    folder = assets / "adapters" / name
    found = sorted(folder.glob("*.pt"))
    if not found:
        raise ModelFileError(f"expected the shipped '{name}' adapter checkpoints, found none",
                             path=folder, hint="rebuild the world assets: train/world/README.md")
    return found


def final_checkpoint(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: (inspect_checkpoint(p).training.step or 0, p.name))


def metric(results: dict[str, Any], checkpoint: Path, scale: float, name: str) -> float | None:
    label = label_of(label_map(results), checkpoint)
    for row in results["results"]:
        if row_label(row) == label and row["gate_scale"] == scale:
            value = row["metrics"].get(name)
            return None if value is None else value["value"]
    return None


def _fmt(value: float | None) -> str:
    return "not computed" if value is None else f"{value:.3f}"


def gate_path(report: GateReport) -> str:
    """'0.1 (init) -> 0.822 (step 4000)': where a series' mean raw gate started and ended."""
    points = report.trajectory
    if not points:
        return "no trajectory"
    init = report.checkpoints[0].info.training.gate_init if report.checkpoints else None
    start = f"{init:.3g} (init)" if init is not None else \
        f"{points[0].gate_mean:.3g} ({report.trajectory_axis} {points[0].x})"
    return f"{start} -> {points[-1].gate_mean:.3g} ({report.trajectory_axis} {points[-1].x})"


def expectations(results: dict[str, Any], gate_codes: dict[str, set[str]],
                 finals: dict[str, Path], gate_paths: dict[str, str] | None = None
                 ) -> list[Expectation]:
    good, dead = finals["good"], finals["deadlock"]
    iou1, iou0 = metric(results, good, 1.0, "iou50_rate"), metric(results, good, 0.0, "iou50_rate")
    clip1, clip0 = metric(results, good, 1.0, "clip_score"), metric(results, good, 0.0, "clip_score")
    ceiling = (results.get("real_images_ceiling") or {}).get("metrics", {}).get("iou50_rate", {})
    ceil_value = ceiling.get("value")
    dead1, dead0 = metric(results, dead, 1.0, "iou50_rate"), metric(results, dead, 0.0, "iou50_rate")
    legacy_codes = gate_codes["legacy"]
    out = [
        Expectation("good adapter places objects (IoU>0.5 rate at scale 1)", ">= 0.60",
                    _fmt(iou1), iou1 is not None and iou1 >= 0.6),
        Expectation("base alone places at random (IoU>0.5 rate at scale 0)", "<= 0.20",
                    _fmt(iou0), iou0 is not None and iou0 <= 0.2),
        Expectation("CLIP score higher with the adapter than without", f"> {_fmt(clip0)}",
                    _fmt(clip1), clip0 is not None and clip1 is not None and clip1 > clip0),
        Expectation("detector ceiling on ground-truth images", ">= 0.95", _fmt(ceil_value),
                    ceil_value is not None and ceil_value >= 0.95),
        Expectation("legacy series flagged by its gates", "collapse or falling",
                    ", ".join(sorted(legacy_codes)) or "none",
                    bool(legacy_codes & {"collapse", "falling"})),
        Expectation("deadlock checkpoint flagged", "deadlock",
                    ", ".join(sorted(gate_codes["deadlock"])) or "none",
                    "deadlock" in gate_codes["deadlock"]),
        Expectation("deadlocked adapter changes nothing (IoU rate at 1 equals scale 0)",
                    f"= {_fmt(dead0)}", _fmt(dead1), dead1 is not None and dead1 == dead0),
    ]
    health = [metric(results, good, 1.0, m) for m in ("garbled_rate", "blank_rate")]
    out.append(Expectation("good adapter's scale-1 images healthy (garbled / blank rate)",
                           "< 0.10 / < 0.10", " / ".join(_fmt(v) for v in health),
                           all(v is not None and v < 0.1 for v in health)))
    legacy = finals["legacy"]
    garbled = [metric(results, legacy, s, "garbled_rate") for s in (0.0, 0.5, 1.0, 2.0)]
    out.append(Expectation("legacy garbled rate at scales 0 / 0.5 / 1 / 2 (reported, not required)",
                           "rises with scale, if this world shows it",
                           " / ".join(_fmt(v) for v in garbled), True, required=False))
    blank = [metric(results, legacy, s, "blank_rate") for s in (0.0, 0.5, 1.0, 2.0)]
    out.append(Expectation("legacy blank rate at scales 0 / 0.5 / 1 / 2 (reported, not required)",
                           "near-black / uniform frames, if any", " / ".join(_fmt(v) for v in blank),
                           True, required=False))
    if gate_paths and {"good", "gligen"} <= set(gate_paths):
        out.append(Expectation("gate trajectories of the two inits (reported, not required)",
                               "both open", f"zero-out (good) {gate_paths['good']}; "
                               f"gligen {gate_paths['gligen']}", True, required=False))
    return out


def run_demo(out: Path, *, num_samples: int | None = None, steps: int | None = None,
             device: str = "auto", console: Console | None = None,
             progress_factory: Callable[[int], Any] | None = None) -> tuple[int, list[Expectation]]:
    console = console or Console()
    protocol = load_protocol("shapes")
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["generation"] = {"steps": steps}
    protocol = protocol.replace(**overrides, **({"num_samples": num_samples} if num_samples is not None else {}))
    out.mkdir(parents=True, exist_ok=True)
    series = {name: series_checkpoints(name) for name in SERIES}
    series |= {name: series_checkpoints(name) for name in GATES_ONLY_SERIES
               if (ASSETS_DIR / "adapters" / name).is_dir()}
    gate_codes: dict[str, set[str]] = {}
    gate_paths: dict[str, str] = {}
    sections = []
    for name, paths in series.items():
        logs = read_logs(paths[0].parent / "train.log") if (paths[0].parent / "train.log").is_file() else []
        report = analyse([inspect_checkpoint(p) for p in paths], logs, protocol.gates)
        gate_codes[name] = {f.code for f in report.findings}
        gate_paths[name] = gate_path(report)
        plot = plot_trajectory(report, out / f"gates_{name}.png")
        sections.append(render_markdown(report, plot.name if plot else None)
                        .replace("## Gates", f"## Gates: {name} series", 1))
        console.print(f"[bold]{name} series[/bold]: {len(paths)} checkpoints, gate verdict "
                      f"{report.verdict}, mean raw gate {gate_paths[name]}")
        render_findings(report.findings, console)
    finals = {name: final_checkpoint(series[name]) for name in SERIES}
    result = run_evaluation([finals[n] for n in SERIES], protocol,
                            RunOptions(out_dir=out, device=device, command="gatebench demo"),
                            progress_factory=progress_factory)
    checks = expectations(result.results, gate_codes, finals, gate_paths)
    table = Table(title="demo expectations (the shapes world's acceptance bar)", title_justify="left")
    for column in ("check", "expected", "observed", "ok"):
        table.add_column(column)
    for e in checks:
        mark = ("[green]yes[/green]" if e.ok else "[red]NO[/red]") if e.required else "-"
        table.add_row(escape(e.name), escape(e.expected), escape(e.observed), mark)
    console.print(table)
    lines = ["", "## Demo expectations", "", "| check | expected | observed | ok |", "|---|---|---|:---:|"]
    lines += [f"| {e.name} | {e.expected} | {e.observed} | "
              f"{('✓' if e.ok else '✗') if e.required else '-'} |" for e in checks]
    report_path = result.paths["report"]
    text = report_path.read_text(encoding="utf-8") + "\n".join(lines) + "\n\n" + "\n\n".join(sections)
    atomic_write_text(report_path, text)
    atomic_write_text(out / "demo.json", json.dumps([asdict(e) for e in checks], indent=2,
                                                    ensure_ascii=False))
    console.print(escape(f"report: {report_path}"))
    return (0 if all(e.ok for e in checks if e.required) else 1), checks

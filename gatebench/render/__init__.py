"""Every output format: Markdown, LaTeX, HTML, terminal tables, plots (see ARCHITECTURE.md).

``FORMATS`` is the one list of report formats: `gatebench report --format` offers exactly its
keys, and ``rerender`` dispatches through it. A new format is one entry plus its renderer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class OutputFormat:
    suffix: str
    render: Callable[..., str]     # (run, figures_dir, comparison) -> text
    needs_samples: bool = True


def _markdown(run: Any, out_dir: Path, comparison: dict | None) -> str:
    from gatebench.render.markdown import build_figures, render_report  # noqa: PLC0415

    figures = build_figures(run.results, run.samples, results_dir=run.folder, out_dir=out_dir)
    return render_report(run.results, figures=figures, samples=run.samples, comparison=comparison)


def _latex(run: Any, out_dir: Path, comparison: dict | None) -> str:
    import pandas as pd  # noqa: PLC0415

    from gatebench.render.latex import render_latex  # noqa: PLC0415
    from gatebench.render.markdown import build_figures  # noqa: PLC0415

    figures = build_figures(run.results, pd.DataFrame(), results_dir=run.folder, out_dir=out_dir)
    return render_latex(run.results, figures=figures, comparison=comparison)


def _html(run: Any, out_dir: Path, comparison: dict | None) -> str:
    from gatebench.render.html import markdown_to_html  # noqa: PLC0415

    return markdown_to_html(_markdown(run, out_dir, comparison), out_dir,
                            title=f"gatebench report: {run.results['protocol']['name']}")


FORMATS: dict[str, OutputFormat] = {"md": OutputFormat(".md", _markdown),
                                    "latex": OutputFormat(".tex", _latex),
                                    "html": OutputFormat(".html", _html)}


def rerender(results_path: Path, fmt_name: str = "md", out: Path | None = None) -> Path:
    """`gatebench report`: re-render from saved outputs; figures go beside the output file."""
    from gatebench.errors import GatebenchError  # noqa: PLC0415
    from gatebench.files import atomic_write_text  # noqa: PLC0415
    from gatebench.render.markdown import matching_comparison  # noqa: PLC0415
    from gatebench.rundir.outputs import check_not_input  # noqa: PLC0415
    from gatebench.rundir.saved import load_run  # noqa: PLC0415

    if fmt_name not in FORMATS:
        raise GatebenchError(f"expected --format {', '.join(FORMATS)}, got {fmt_name!r}")
    output = FORMATS[fmt_name]
    run = load_run(results_path, need_samples=False)
    out = out or run.folder / f"report{output.suffix}"
    if out.exists() and out.is_dir():
        out = out / f"report{output.suffix}"
    check_not_input(out, [run.path, run.folder / "samples.jsonl"])
    text = output.render(run, out.parent, matching_comparison(run.results, run.folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out, text)

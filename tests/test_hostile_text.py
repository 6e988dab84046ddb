"""Hostile text (issue 33): captions, names, labels, paths and findings that carry HTML, Markdown,
LaTeX, rich markup, control characters, RTL marks, very long and empty strings reach every report
format as text: no live element in the HTML, no raw HTML in report.md, every table row keeps its
columns, no LaTeX command or stray brace, terminal markup shown literally, PNGs drawn.

One list of nasty strings (NASTY) feeds every test. The run folder is the committed golden run
(tests/data/golden/run, no diffusion model) with those strings written into its results.json and
samples.jsonl, re-rendered the way `gatebench report` does.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from rich.console import Console
from rich.text import Text

from gatebench.gates import Finding
from gatebench.metrics.stats import MetricValue
from gatebench.render import plots, rerender
from gatebench.render.escape import (
    clean,
    md_code,
    md_text,
    plot_text,
    png_text,
    rich_text,
    tex_text,
)
from gatebench.render.flagged import flagged_section, flagged_strip
from gatebench.render.gates import render_findings
from gatebench.render.html import ALLOWED, EXTENSIONS, markdown_to_html
from gatebench.render.terminal import render_score

GOLDEN_RUN = Path(__file__).parent / "data" / "golden" / "run"

NASTY = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "<b onmouseover=alert(1)>hover me</b>",
    "<a href='javascript:alert(1)'>link</a>",
    "<!-- comment --><iframe src=//evil>",
    "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#60;b&#62;",
    "a | b || c |",
    "`tick` ``double`` ```triple",
    "[click](javascript:alert(1)) ![img](/etc/passwd) <http://evil.example>",
    "# heading",
    "- list item",
    "1. numbered",
    "> quote",
    "**bold** _em_ *em* ~~strike~~ __x__",
    "\\input{/etc/hostname}",
    "}\\end{table}{\\begin{document}",
    "ck_50%_&_$x#1.pt ^~ $\\frac{",
    "[bold red]rich[/bold red] [link=http://evil]l[/link] [/]",
    "trailing backslash \\",
    "line\nbreak\r\nand\ttab\x0bvt\u2028ls",
    "\x00nul \x1b[31mansi red\x1b[0m \x07bell \x7fdel \x9bcsi",
    "\u202eevil override\u202c \u2066isolate\u2069",
    "\u200fRTL mark \u061cALM \u200eLRM שלום مرحبا",
    "红色方块 emoji 🟥 combining e\u0301",
    "\ud800 lone surrogate",
    "x" * 3000,
    "",
    " ",
]
OWN_HTML = ('<details markdown="1"><summary>every comparison</summary>', "</details>")


# -- helpers ------------------------------------------------------------------------------------

CODE_SPAN = re.compile(r"(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def outside_code(text: str) -> str:
    """Markdown text without its code spans (their content is literal, never HTML)."""
    return CODE_SPAN.sub("", text)


def md_cells(line: str) -> list[str]:
    """A GFM table row's cells: split on pipes no backslash escapes."""
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def md_tables(text: str) -> list[list[str]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables + ([current] if current else [])


def assert_tables_keep_columns(text: str) -> int:
    tables = md_tables(text)
    for table in tables:
        width = len(md_cells(table[0]))
        for row in table:
            assert len(md_cells(row)) == width, (width, row[:300])
    return len(tables)


class Dom(HTMLParser):
    """Every element, its attributes, the text, and the cell count of every table row."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self.rows: list[list[int]] = []       # per table: cells of each row
        self._cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))
        if tag == "table":
            self.rows.append([])
        elif tag == "tr":
            self._cells = 0
        elif tag in ("td", "th"):
            self._cells += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self.rows:
            self.rows[-1].append(self._cells)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html_text: str) -> Dom:
    dom = Dom()
    dom.feed(html_text)
    dom.close()
    return dom


def assert_no_injection(dom: Dom, images: int | None = None) -> None:
    tags = [tag for tag, _ in dom.elements]
    assert not {"script", "iframe", "a", "object", "embed", "svg", "form"} & set(tags), tags
    assert tags.count("style") <= 1          # the page's own stylesheet, in <head>
    assert set(tags) <= ALLOWED | {"html", "head", "meta", "title", "style", "body"}, \
        set(tags) - ALLOWED
    for tag, attrs in dom.elements:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)
            assert "javascript" not in (value or "").lower(), (tag, name, value)
            if tag == "img" and name == "src":
                assert value and (value.startswith("data:image/png;base64,")
                                  or re.fullmatch(r"[\w.-]+\.png", value)), value
    if images is not None:
        assert tags.count("img") == images
    for table in dom.rows:
        assert table and all(n == table[0] for n in table), table


# -- the hostile run folder ---------------------------------------------------------------------

def nasty(i: int) -> str:
    return NASTY[i % len(NASTY)]


def hostile_run(folder: Path) -> Path:
    """The golden run with NASTY written into every field a renderer shows."""
    shutil.copytree(GOLDEN_RUN, folder)
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    protocol_name = " ".join(NASTY[:3] + [NASTY[14], NASTY[19]])
    results["protocol"]["name"] = protocol_name
    results["protocol"]["description"] = " ".join(NASTY[:20])
    labels = {}
    for i, row in enumerate(results["results"]):
        ck = row["checkpoint"]
        labels.setdefault(Path(ck).name, f"{NASTY[i % 2 * 14]}|{NASTY[16]}{len(labels)}.pt")
        row["label"] = labels[Path(ck).name]
        row["not_computed"] = {"kid": nasty(i), nasty(i + 1)[:40] or "m": nasty(i + 2)}
    targets = results["targets"]
    targets[0].update(computed=False, value=None, ci_low=None, ci_high=None, passed=False,
                      note=NASTY[0] + NASTY[6])
    results["gate_findings"] = [{"code": "saturated", "severity": "warn", "message": s,
                                 "subject": s} for s in NASTY]
    results["command"] = NASTY[7] + NASTY[0]
    results["device"] = NASTY[2]
    results["dtype"] = NASTY[6]
    results["versions"] = {"python": NASTY[0], NASTY[17]: NASTY[19]}
    results["models"]["fid_reference"] = NASTY[1] + NASTY[6]
    results["models"]["detector"]["path"] = NASTY[8]
    results["generation"]["phrase_encoding"] = NASTY[3]
    results["generation"]["caches"][0]["folder"] = NASTY[7]
    results["max_layouts"] = 24                # a `run --until-decided` that stopped early
    results["sequential"] = {
        "alpha": 0.05, "alpha_each": 0.01, "decisions": 5, "split": NASTY[6] + NASTY[0],
        "round_layouts": 3, "n_layouts": 6, "max_layouts": 24, "stopped_early": True,
        "decided": "fail", "reason": NASTY[1] + NASTY[14], "order": NASTY[7] + NASTY[8],
        "set_level": ["fid"], "rounds": [{"n_layouts": 3, "decided": None},
                                         {"n_layouts": 6, "decided": "fail"}],
        "rows": [{"checkpoint": t["checkpoint"], "gate_scale": t["gate_scale"],
                  "metric": t["metric"], "op": t["op"], "threshold": t["threshold"],
                  "lower": 0.1, "upper": 0.5, "n": 6, "decision": "fail", "decidable": True,
                  "why": nasty(i)} for i, t in enumerate(targets)]}
    comparison = {"comparable": True, "regressions": 1, "warnings": NASTY[:6],
                  "candidate": {"created": results["created"],
                                "layout_ids_sha256": results["layout_ids_sha256"]},
                  "baseline": {"results": f"{NASTY[2]}/results.json", "created": NASTY[0]},
                  "settings": {"ci_level": 0.95, "n_boot": 100, "seed": 7},
                  "rows": [{"checkpoint_index": 0, "baseline_checkpoint": nasty(i),
                            "candidate_checkpoint": nasty(i + 1), "gate_scale": 1.0,
                            "metric": "iou50_rate", "direction": "higher", "kind": "paired",
                            "baseline": 0.5, "candidate": 0.4, "diff": -0.1, "ci_low": -0.2,
                            "ci_high": -0.05, "n_pairs": 6, "dropped": 0, "margin": 0.02,
                            "gated": True, "status": "regression", "note": nasty(i + 2),
                            "baseline_label": nasty(i), "candidate_label": nasty(i + 3)}
                           for i in range(len(NASTY))]}
    (folder / "compare.json").write_text(json.dumps(comparison), encoding="utf-8")
    text = json.dumps(results, indent=1)     # checkpoint paths too: reasons and footers quote them
    hostile_dir = json.dumps(f"ckpt/{NASTY[2]}|{NASTY[7]}/")[1:-1]
    (folder / "results.json").write_text(text.replace("ckpt/", hostile_dir), encoding="utf-8")
    lines = [json.loads(line) for line in
             (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    layouts: dict[str, str] = {}
    for j, rec in enumerate(lines):
        rec["checkpoint"] = labels[rec["checkpoint"]]
        layouts.setdefault(rec["layout_id"], nasty(len(layouts) * 5) or "empty-id")
        rec["layout_id"] = layouts[rec["layout_id"]]
        rec["caption"] = nasty(j + 3)
        rec["image"] = nasty(j)
        for k, box in enumerate(rec.get("boxes") or []):
            box["label"] = nasty(j + k + 11)
        for det in rec.get("detections") or []:
            det["label"] = nasty(j + 17)
    # ensure_ascii: the lone surrogate travels as \ud800, as a foreign JSON file would carry it
    (folder / "samples.jsonl").write_text("\n".join(json.dumps(rec) for rec in lines) + "\n",
                                          encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`gatebench report` in md, html and latex. The matplotlib charts (10 s a render on a busy
    CPU, no text from data but names, which test_plot_labels covers) are left out."""
    run = hostile_run(tmp_path_factory.mktemp("hostile") / "run")
    out = tmp_path_factory.mktemp("hostile_out")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("plot_metric_vs_scale", "plot_metric_vs_epoch", "plot_gate_trajectory"):
            patch.setattr(plots, name, lambda *args, **kwargs: None)
        return {"md": rerender(run / "results.json", "md", out / "report.md"),
                "html": rerender(run / "results.json", "html", out / "report.html"),
                "latex": rerender(run / "results.json", "latex", out / "report.tex"),
                "run": run, "out": out}


# -- per format ---------------------------------------------------------------------------------

def test_report_md_has_no_raw_html_and_every_row_keeps_its_columns(reports) -> None:
    text = reports["md"].read_text(encoding="utf-8")
    prose = outside_code(text)
    for own in OWN_HTML:                     # the report's own markup (the comparison's fold)
        prose = prose.replace(own, "")
    assert "## Regression check" in text and "## Stopped when decided" in text
    assert re.search(r"<[A-Za-z/!?]", prose) is None, re.search(r".{40}<[A-Za-z/!?].{40}", prose)
    assert assert_tables_keep_columns(text) >= 6
    assert "javascript:alert(1))" in prose and not re.search(r"(?<!\\)\]\(javascript", prose)
    assert "\x1b" not in text and "\u202e" not in text and "\x00" not in text
    for line in text.splitlines():          # data never starts a line: no heading, quote, list
        assert not line.startswith(("# heading", "> quote", "- list item", "1. numbered"))


def test_markdown_to_html_before_the_allowlist_has_no_injected_element(reports) -> None:
    """The escaping alone already holds: Python-Markdown's own output, not sanitised."""
    import markdown

    text = reports["md"].read_text(encoding="utf-8")
    raw = parse(markdown.markdown(text, extensions=list(EXTENSIONS)))
    figures = sum(line.startswith("![") for line in text.splitlines())
    assert figures >= 3                      # two sample grids and the flagged strip
    assert_no_injection(raw, images=figures)


def test_html_report_has_no_live_element_from_data(reports) -> None:
    page = reports["html"].read_text(encoding="utf-8")
    dom = parse(page)
    text = reports["md"].read_text(encoding="utf-8")
    assert_no_injection(dom, images=sum(line.startswith("![") for line in text.splitlines()))
    shown = "".join(dom.text)
    for s in NASTY[:4]:                      # shown as text, not dropped
        assert clean(s) in shown, s
    assert "a | b || c |" in shown and "`tick` ``double``" in shown


def test_latex_takes_control_sequences_and_braces_as_text(reports) -> None:
    tex = reports["latex"].read_text(encoding="utf-8")
    assert "\\input{" not in tex and "\\end{table}{" not in tex
    assert r"\textbackslash{}input\{/etc/hostname\}" in tex
    depth = 0
    for ch in re.sub(r"\\[{}]", "", tex):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert tex.splitlines()[0].startswith("% gatebench report:") and "break" in \
        tex.splitlines()[0]                       # the newline did not end the comment


@pytest.mark.parametrize("s", NASTY)
def test_each_string_in_every_escaper(s: str) -> None:
    row = f"| {md_text(s)} | {md_code(s)} | {md_text(s)}{md_code(s)} |"
    assert len(md_cells(row)) == 3
    page = markdown_to_html("\n".join(["| a | b | c |", "|---|---|---|", row]), Path("."))
    assert_no_injection(parse(page), images=0)
    assert re.search(r"<[A-Za-z/!?]", md_text(s)) is None
    tex = tex_text(s)
    assert re.sub(r"\\(textbackslash|textasciitilde|textasciicircum)\{\}|\\[&%$#_{}]", "",
                  tex).count("\\") == 0
    # rich doubles a trailing backslash, so that it cannot escape the markup printed after it
    shown = clean(s, keep_newlines=True)
    assert Text.from_markup(rich_text(s)).plain in (shown, shown + "\\")
    assert "\n" not in clean(s) and "\x1b" not in clean(s) and "\u202e" not in clean(s)
    clean(s).encode("utf-8")                      # lone surrogates gone: the write cannot fail


@pytest.mark.parametrize("s", NASTY)
def test_png_text_draws_any_unicode_within_its_width(s: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    pen = ImageDraw.Draw(Image.new("RGB", (240, 40), (255, 255, 255)))
    for font in (ImageFont.load_default(size=11), ImageFont.load_default_imagefont()):
        text = png_text(s, font, 200)
        pen.text((2, 2), text, font=font, fill=(0, 0, 0))
        assert font.getlength(text) <= 200


def test_plot_labels_with_dollars_and_tex_draw(tmp_path: Path) -> None:
    """A legend of every string: "$\\frac{" would fail the whole figure as mathtext."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=40)
    for i, s in enumerate(NASTY):
        ax.plot([0, 1], [i, i], label=plot_text(s[:60]) or "-")
    ax.set_title(plot_text(NASTY[16]))
    ax.legend(fontsize=4)
    fig.savefig(tmp_path / "legend.png")
    plt.close(fig)
    assert (tmp_path / "legend.png").stat().st_size > 0


def test_terminal_shows_markup_literally_and_no_escape_codes() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
    render_findings([Finding("saturated", "warn", s, s) for s in NASTY], console)
    result = SimpleNamespace(samples=[0, 1], metrics={"iou50_rate": MetricValue(0.5, 0.4, 0.6, 2)},
                             not_computed={f"metric_{i}": s for i, s in enumerate(NASTY)})
    targets = [SimpleNamespace(metric="iou50_rate", op=">", threshold=0.6, passed=False, note=s)
               for s in NASTY]
    render_score(result, targets, Path(NASTY[17]), None, console)
    output = buffer.getvalue()
    assert "[bold red]rich[/bold red] [link=http://evil]l[/link] [/]" in output
    assert "\x1b" not in output and "\x00" not in output and "\u202e" not in output


def test_flagged_thumbnails_with_hostile_names(tmp_path: Path, reports) -> None:
    samples = pd.read_json(reports["run"] / "samples.jsonl", lines=True)
    samples["garbled"] = True
    png, rows, total = flagged_strip(samples, reports["run"], tmp_path / "flagged.png")
    assert png is not None and png.is_file() and total == len(samples) and len(rows) == 24
    section = "\n".join(flagged_section({"file": png.name, "rows": rows, "total": total}))
    assert assert_tables_keep_columns(section) == 1
    assert re.search(r"<[A-Za-z/!?]", outside_code(section)) is None
    assert (reports["out"] / "flagged.png").is_file()      # the report drew its own strip too
    assert len(list(reports["out"].glob("grid_*.png"))) == 2


CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and Path(p).is_file()),
                None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine")
def test_html_report_in_headless_chromium(reports, tmp_path: Path) -> None:
    """What a browser builds from the file: no script element, no handler, the text shown."""
    result = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                             reports["html"].as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = parse(result.stdout)
    assert_no_injection(dom)
    assert "<script>alert(1)</script>" in "".join(dom.text)

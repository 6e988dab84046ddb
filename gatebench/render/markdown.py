"""report.md from a run's results (re-renderable from results.json + samples.jsonl alone).

The Markdown is meant to be pasted into a paper supplement or a PR comment: headline pass/fail
table with 95% CIs, the regression check when there is a baseline, metrics per checkpoint x gate
scale, plots, sample grids, gate health, definitions with N and the reference set, and a
reproducibility footer (command, versions, seed, hashes). Every number is read from results.json:
`gatebench report` re-renders the same report `gatebench run` wrote, nothing is recomputed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from gatebench.files import atomic_write_bytes, atomic_write_text
from gatebench.metrics import spec as metric_spec
from gatebench.render.escape import md_code, md_text
from gatebench.render.flagged import flagged_section, flagged_strip
from gatebench.render.format import (
    Figures,
    fmt,
    fmt_against,
    has_ci,
    scale_label,
    short_sha,
    value_ci,
)
from gatebench.render.sections import (
    early_set_level,
    gates_section,
    samples_section,
    sequential_section,
    writes_section,
)
from gatebench.rundir.results import verdict_of
from gatebench.rundir.saved import checkpoint_paths, label_map, label_of

if TYPE_CHECKING:
    from gatebench.gates import GateReport

DEFINITIONS = """\
## Definitions

- **Effective gate** = gate scale x tanh(raw gate); gate scale s blends the adapter's residual:
  h + s * (out - h). Scale 0 is the base model alone (same seed, same initial noise).
- **iou50_rate**: share of scorable ground-truth boxes matched one-to-one (Hungarian on IoU,
  same class) by a detection with IoU > 0.5. Boxes whose class the detector cannot name are
  unscorable and excluded. **miou**: mean IoU over scorable GT boxes (0 when unmatched).
  **all_matched_rate**: share of images whose every scorable box is matched. **ap50/ap**:
  COCO-style AP from a maintained COCO evaluator.
- **relation_rate**: share of box pairs with a spatial relation (left / right / above / below:
  centres at least `relation_min_sep` apart along the dominant axis) that the detections kept
  with `relation_margin`; a pair with an undetected box fails. **relation_rate_matched**: the
  same over pairs whose two boxes were both detected. Pairs with an unscorable box are counted
  apart (the user's rel_acc_all / rel_acc_matched, without dropping unnamed objects).
- **clip_score**: cosine similarity between image and caption embeddings on a 0-1 scale
  (torchmetrics' CLIPScore is 100x this). **region_clip_score**: GT box crop vs its phrase.
- **fid/kid**: against reference statistics of real images; N and the reference set are stated
  next to every value (FID at N=1k and at N=30k are different claims).
- **garbled_rate**: share of images whose garbled score exceeds the protocol threshold. At
  scale > 0 the score measures what the adapter ADDED relative to the gate-0 twin (same seed);
  at scale 0 there is no twin and an absolute statistic is used, so scale 0's rate is not on the
  same footing as the others.
- **blank_rate**: share of images that are near-black, near-white or near-uniform (blank score
  above the protocol's `blank_threshold`); a blank image is not also counted in garbled_rate.
  The garbled score itself is calibrated on real garbled/clean Kolors outputs (colour-edge
  strength in CIELAB, plus colour speckle and vivid share; see `gatebench.metrics.health`).
- **Where the adapter writes** (measured while generating, from the adapter's own activations at
  every cross-attention site and grounded step, conditional CFG half; sums pooled over sites and
  steps, so a site weighs by what it writes): **effect_in_boxes** = share of the residual energy
  sum ||delta||^2 on tokens inside the union of the boxes; **effect_lift** = that share over a
  uniform writer's (the union's token share): 1 writes evenly, > 1 concentrates in the boxes;
  **box_attention_kappa** = per box, the share of the attention it receives that comes from
  tokens inside it, chance-corrected by its token share and averaged over boxes (layouts with
  >= 2 boxes unless the adapter has a null slot: with one box the softmax over one key is
  uniform by construction; with region attention it is 1 by construction); **effect_norm**
  = RMS ||delta|| / RMS ||h||, the write's strength against the stream it is added to (lower =
  less overwrite risk; 0 = the adapter does nothing). Not computed at scale 0 (adapter off), for
  an adapter whose effect is exactly 0 (its shares), or for images made elsewhere. Diagnostics:
  `compare` pairs them but gates them only when named.
- **N**: scorable ground-truth boxes for iou50_rate, miou, ap50 and ap; all ground-truth boxes
  for region_clip_score; generated images (one per layout and gate scale) for the others.
  ap50, ap, fid and kid are set-level numbers: no per-layout bootstrap, so no CI.
- Every value carries a bootstrap confidence interval over layouts (seeded); comparisons between
  gate scales or checkpoints are paired (same layouts, same seeds).
"""


def definitions() -> str:
    """DEFINITIONS, plus the table's one-line definition of any metric the prose does not name
    (so a new metric is defined in the report without editing this module)."""
    extra = [f"- **{m.name}** ({'higher' if m.higher_is_better else 'lower'} is better"
             f"{', set-level' if m.level == 'set' else ''}): {m.definition}."
             for m in metric_spec.METRICS.values()
             if not re.search(rf"\b{re.escape(m.name)}\b", DEFINITIONS)]
    return DEFINITIONS + "".join(line + "\n" for line in extra)


def n_unit(name: str) -> str:
    """What a metric's N counts (``images`` for a name outside the table)."""
    spec = metric_spec.get(name)
    return spec.n_of if spec is not None else "images"


def ci_text(metric: dict[str, Any]) -> str:
    if not has_ci(metric):
        return "- (set-level)" if metric.get("metric") in metric_spec.SET_METRICS else "-"
    return f"[{fmt(metric['ci_low'])}, {fmt(metric['ci_high'])}]"



def headline_table(results: dict[str, Any]) -> list[str]:
    """Targets per checkpoint and gate scale: value, 95% CI, N, target, ✓/✗."""
    order = {ck: i for i, ck in enumerate(checkpoint_paths(results))}
    labels = label_map(results)
    rows = sorted(enumerate(results["targets"]), key=lambda it: (
        order.get(str(it[1]["checkpoint"]), len(order)),
        -1.0 if it[1].get("gate_scale") is None else float(it[1]["gate_scale"]), it[0]))
    lines = ["| checkpoint | gate scale | metric | value | 95% CI | N | target | pass |",
             "|---|---:|---|---:|---|---:|---|:---:|"]
    straddle = False
    stopped = early_set_level(results)      # "†": computed on the n images a stopped run made
    for _, t in rows:
        if t["computed"]:
            value, ci = fmt_against(float(t["value"]), t["op"], float(t["threshold"])), ci_text(t)
        else:
            value, ci = md_text(t.get("note") or "not computed"), "-"
        if t["computed"] and t["metric"] in stopped:
            value += "†"
        mark = "✓" if t["passed"] else "✗"
        if t["computed"] and t.get("ci_clear") is False and t["passed"]:
            mark, straddle = "✓*", True
        name = "all" if t["checkpoint"] == "*" else md_code(label_of(labels, t["checkpoint"]))
        n = "-" if t.get("n") is None else str(t["n"])
        lines.append(f"| {name} | {scale_label(t.get('gate_scale'))} | {md_text(t['metric'])} | "
                     f"{value} | {ci} | {n} | {t['op']} {t['threshold']:g} | {mark} |")   # op: schema-checked
    if straddle:
        lines += ["", "✓* passes on the point value, but its 95% CI crosses the threshold: not a "
                      "confident pass."]
    return lines


def metrics_tables(results: dict[str, Any]) -> list[str]:
    """One table per checkpoint: a row per metric, a column per gate scale (value [95% CI])."""
    from gatebench.render.plots import metric_names  # noqa: PLC0415
    from gatebench.rundir.saved import checkpoint_axis  # noqa: PLC0415

    names = metric_names(results)
    axis, xs = checkpoint_axis(results)
    labels = label_map(results)
    lines: list[str] = []
    for ck in checkpoint_paths(results):
        rows = sorted((r for r in results["results"] if str(r["checkpoint"]) == ck),
                      key=lambda r: float(r["gate_scale"]))
        where = f" ({axis} {xs[ck]:g})" if axis != "checkpoint" else ""
        lines += [f"### {md_code(labels[ck])}{where}", "",
                  "| metric | N | " + " | ".join(f"scale {scale_label(float(r['gate_scale']))}"
                                                  for r in rows) + " |",
                  "|---|---:|" + "---|" * len(rows)]
        for name in names:
            ns = list(dict.fromkeys(str((r["metrics"].get(name) or {}).get("n", "-"))
                                    for r in rows))
            unit = n_unit(name)
            cells = [value_ci(r["metrics"].get(name)) for r in rows]
            lines.append(f"| {md_text(name)} | {md_text('/'.join(ns))} {unit} | "
                         + " | ".join(cells) + " |")
        bad = [r for r in rows if r.get("nonfinite_images")]
        for r in bad:
            lines.append(f"\n{r['nonfinite_images']} image(s) with NaN/Inf pixels at scale "
                         f"{r['gate_scale']:g}.")
        lines.append("")
    reasons: dict[str, list[str]] = {}
    for row in results["results"]:
        for name, why in (row.get("not_computed") or {}).items():
            if name not in names and name not in reasons.get(why, []):
                reasons.setdefault(why, []).append(name)
    if reasons:
        lines += ["Not computed: " + "; ".join(f"{md_text(', '.join(ns))} ({md_text(why)})"
                                               for why, ns in reasons.items()) + ".", ""]
    return lines


def summary_line(results: dict[str, Any], comparison: dict[str, Any] | None) -> str:
    """The verdict as results.json records it (rundir.results.decide_verdict), with its parts."""
    decision = verdict_of(results, comparison)
    parts = decision["parts"]
    shown = [parts["targets"]["reason"], f"gate health {parts['gates']['status']}"]
    if "regression" in parts:
        shown.append(f"regression check {parts['regression']['status']}: "
                     f"{parts['regression']['reason']}")
    if "sequential" in parts:
        shown.append(f"stopped when decided: {parts['sequential']['status']}")
    return f"**Verdict: {decision['verdict'].upper()}** — " + "; ".join(shown) + "."


def render_report(results: dict[str, Any], gates_markdown: str | None = None, *,
                  figures: Figures | None = None, samples: pd.DataFrame | None = None,
                  comparison: dict[str, Any] | None = None) -> str:
    """The whole Markdown report. ``gates_markdown`` None/empty: rendered from results.json."""
    from gatebench.render.compare import render_markdown as comparison_markdown  # noqa: PLC0415

    figures = figures or Figures()
    protocol = results["protocol"]
    sha = md_text(short_sha(results.get("protocol_sha256")))
    out = [f"# gatebench report: {md_text(protocol['name'])}", "",
           summary_line(results, comparison), "",
           f"{results['n_layouts']} layouts, seed {results['seed']}, protocol "
           f"{md_code(protocol['name'])} (sha256 {sha}), device {md_text(results['device'])} "
           f"({md_text(results.get('dtype') or 'dtype not recorded')}).", "", "## Targets", ""] + headline_table(results) + [""]
    out += sequential_section(results)
    if comparison:
        out += [comparison_markdown(comparison)]
    out += ["## Metrics by checkpoint and gate scale", ""] + metrics_tables(results)
    ceiling = results.get("real_images_ceiling")
    if ceiling:
        cells = ", ".join(f"{md_text(k)} {value_ci(v)}" for k, v in ceiling["metrics"].items())
        out += [f"Same detector on the {ceiling['n_images']} REAL images (the ceiling): {cells}.", ""]
    fid_note = results["models"].get("fid_reference")
    if fid_note:
        out += [f"FID/KID reference set: {md_text(fid_note)}.", ""]
    out += writes_section(results)
    plots = [(figures.metric_vs_scale, "metrics vs gate scale"),
             (figures.metric_vs_epoch, "metrics vs checkpoint")]
    if any(p for p, _ in plots):
        out += ["## Plots", ""] + [f"![{alt}]({p})\n" for p, alt in plots if p]
    out += samples_section(results, samples if samples is not None else pd.DataFrame(), figures)
    out += flagged_section(figures.flagged)
    out += [gates_markdown or gates_section(results, figures.gate_trajectory), "",
            definitions(), *reproducibility(results)]
    return "\n".join(out) + "\n"


FORWARD_KEYS = ("fourier", "query", "text_proj", "phrases", "null_slot", "box_mask", "slots")


def _adapter_build(config: dict[str, Any], uncond: str | None) -> str:
    """Which reference a checkpoint's adapter followed and every forward choice (results.json
    of gatebench < 0.2 recorded only query, null_slot and box_mask)."""
    built = {k: config[k] for k in FORWARD_KEYS if k in config}
    if not built:
        return ""
    text = f"; follows {md_text(config['reference'])}" if config.get("reference") else ""
    text += "; adapter " + ", ".join(f"{k} {md_text(v)}" for k, v in built.items())
    return text + (f"; CFG unconditional half: {md_text(uncond)}" if uncond else "")


def reproducibility(results: dict[str, Any]) -> list[str]:
    protocol, gen = results["protocol"], results.get("generation") or {}
    g = protocol.get("generation", {})
    s = protocol.get("scoring", {})
    out = ["## Reproducibility", "",
           f"- command: {md_code(results.get('command') or '(library call)')}",
           f"- created {md_text(results['created'])}, gatebench "
           f"{md_text(results['versions'].get('gatebench'))}",
           "- versions: " + ", ".join(f"{md_text(k)} {md_text(v)}"
                                      for k, v in results["versions"].items()),
           f"- protocol {md_code(protocol['name'])} sha256 "
           f"{md_code(results.get('protocol_sha256'))}; seed {results['seed']}; sampler "
           f"{md_text(g.get('scheduler'))}, {g.get('steps')} steps, guidance "
           f"{g.get('guidance_scale')}; bootstrap {s.get('bootstrap')} replicates, CI level "
           f"{s.get('ci_level')}, match IoU {s.get('match_iou')}",
           f"- layouts: {results['n_layouts']} (ids sha256 "
           f"{md_code(results['layout_ids_sha256'])}); {md_text(results.get('layouts'))}",
           f"- phrase encoding: {md_text(gen.get('phrase_encoding'))}; CFG unconditional half: "
           f"boxes {md_code(gen.get('uncond_boxes'))}"]
    uncond = {str(cache.get("adapter")): cache.get("uncond_boxes")
              for cache in gen.get("caches") or [] if cache.get("adapter")}
    for c in results["checkpoints"]:
        out.append(f"- checkpoint {md_code(c['path'])} sha256 {md_code(c['sha256'])}"
                   f"{_adapter_build(c.get('adapter_config') or {}, uncond.get(str(c['path'])))}")
    for name, model in results["models"].items():
        if not isinstance(model, dict):
            continue
        if model.get("sha256"):
            what = model.get("path") or model.get("name") or model.get("backend") or name
            out.append(f"- {md_text(name)}: {md_code(what)} sha256 {md_code(model['sha256'])}")
        for file, sha in (model.get("weights") or {}).items():
            out.append(f"- {md_text(name)} {md_code(file)} sha256 {md_code(sha)}")
    for cache in gen.get("caches") or []:
        out.append(f"- image cache {md_code(Path(str(cache['folder'])).name)} recipe sha256 "
                   f"{md_code(cache['recipe_sha256'])}")
    timings = results.get("timings") or {}
    if timings:
        out.append("- timings: " + ", ".join(f"{md_text(k)} {fmt(v, 2)}"
                                             for k, v in timings.items()))
    return out


def build_figures(results: dict[str, Any], samples: pd.DataFrame, *, results_dir: Path,
                  out_dir: Path, gate_report: GateReport | None = None) -> Figures:
    """Draw every figure into ``out_dir``; images are looked up relative to ``results_dir``."""
    from gatebench.render import grids  # noqa: PLC0415
    from gatebench.render import plots as rp  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = Figures()
    path = rp.plot_metric_vs_scale(results, out_dir / "metric_vs_scale.png")
    figures.metric_vs_scale = path.name if path else None
    path = rp.plot_metric_vs_epoch(results, out_dir / "metric_vs_epoch.png")
    figures.metric_vs_epoch = path.name if path else None
    path = rp.plot_gate_trajectory(results, out_dir / "gate_trajectory.png")
    if path is None and gate_report is not None:
        # one checkpoint: only the live GateReport knows its own gate history (not saved)
        from gatebench.render.gates import plot_trajectory  # noqa: PLC0415
        path = plot_trajectory(gate_report, out_dir / "gate_trajectory.png")
    elif path is None and (results_dir / "gate_trajectory.png").is_file():
        path = _copy(results_dir / "gate_trajectory.png", out_dir)
    figures.gate_trajectory = path.name if path else None
    if not samples.empty and "layout_id" in samples.columns:
        stems: set[str] = set()
        labels = label_map(results)
        for i, ck in enumerate(checkpoint_paths(results)):
            label = labels[ck]     # runA/final.pt -> grid_runA_final.png
            stem = re.sub(r"[^\w.-]+", "_", str(Path(label).with_suffix("")))
            stem = stem if stem not in stems else f"{stem}_{i}"
            stems.add(stem)
            png, layouts, missing = grids.sample_grid(samples, ck, results_dir,
                                                      out_dir / f"grid_{stem}.png", label=label)
            if png is not None:
                figures.grids.append({"checkpoint": ck, "label": label, "file": png.name,
                                      "layouts": layouts, "missing": missing})
        png, rows, total = flagged_strip(samples, results_dir, out_dir / "flagged.png")
        if png is not None:
            figures.flagged = {"file": png.name, "rows": rows, "total": total}
    return figures


def _copy(src: Path, out_dir: Path) -> Path:
    dst = out_dir / src.name
    if src.resolve() != dst.resolve():
        atomic_write_bytes(dst, src.read_bytes())
    return dst


def matching_comparison(results: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """compare.json beside results.json, only if it was made for THIS results.json."""
    path = folder / "compare.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    cand = doc.get("candidate") or {}
    if not doc.get("comparable") or cand.get("created") != results.get("created") or \
            cand.get("layout_ids_sha256") != results.get("layout_ids_sha256"):
        return None
    return doc


def write_report(results: dict[str, Any], samples: pd.DataFrame, gate_report: GateReport | None,
                 out_dir: Path, comparison: dict[str, Any] | None = None) -> Path:
    """report.md (+ PNGs) into the run folder; called by `gatebench run`."""
    figures = build_figures(results, samples, results_dir=out_dir, out_dir=out_dir,
                            gate_report=gate_report)
    text = render_report(results, figures=figures, samples=samples, comparison=comparison)
    return atomic_write_text(out_dir / "report.md", text)

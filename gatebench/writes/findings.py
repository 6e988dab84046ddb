"""Findings that say why placement fails, read from where the adapter writes.

Two warnings over a run's rows (checkpoint x gate scale, with the write diagnostics' CIs), each
with the likely cause in the user's terms and what to try:

* ``not_localised``: the adapter changes the image (effect_norm > 0) but its effect_lift CI
  reaches 1 + ``LIFT_MARGIN``: it writes (about) as much outside the boxes as inside, so the
  detector finds objects anywhere or nowhere. The margin is a stated choice: on the shapes world
  the plain-attention legacy adapter scores lift 1.05 [1.03, 1.08] (iou50 0.08) while the
  region-attention ones score 3.9-4.0 [3.4, 4.6] (iou50 0.84-0.87);
* ``overwrites_stream``: at some gate scale the garbled rate rises clearly above the base model's
  (its CI lies above scale 0's value): the write's strength there (effect_norm) is named, and
  whether that scale lies above the range the adapter was trained on.

Plain data in, plain data out (results.json rows and checkpoint entries), so ``gatebench report``
re-derives nothing and a saved run renders them as they were found.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from gatebench.gates import Finding

LIFT_MARGIN = 0.1     # a lift below 1.1 is writing (nearly) evenly everywhere


def _metric(row: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = (row.get("metrics") or {}).get(name)
    return value if isinstance(value, dict) and value.get("value") is not None else None


def _ci(m: Mapping[str, Any]) -> str:
    low, high = m.get("ci_low"), m.get("ci_high")
    return f"{m['value']:.3g}" + ("" if low is None or high is None else
                                   f" [{low:.3g}, {high:.3g}]")


def _variants(checkpoint: Mapping[str, Any]) -> tuple[bool, bool]:
    """(null slot, region attention) of a checkpoint's forward; the user's reference has
    neither."""
    config = checkpoint.get("adapter_config") or {}
    return bool(config.get("null_slot")), bool(config.get("box_mask"))


def not_localised(row: Mapping[str, Any], checkpoint: Mapping[str, Any], label: str
                  ) -> Finding | None:
    norm, lift = _metric(row, "effect_norm"), _metric(row, "effect_lift")
    if norm is None or lift is None or not norm["value"] > 0:
        return None
    low = lift.get("ci_low")
    reaches = low if low is not None else lift["value"]
    if reaches > 1 + LIFT_MARGIN:
        return None
    null_slot, region = _variants(checkpoint)
    if checkpoint.get("family") == "gligen":
        cause = ("the fusers' self-attention mixes every visual token with the grounding "
                 "tokens; placement has not been learnt (too few steps, or the gate too small)")
    elif not region and not null_slot:
        cause = ("plain box attention without a region mask or null slot: every image token's "
                 "softmax runs over the boxes alone, so each token receives a mix of box values "
                 "wherever it lies (with ONE box, the same value everywhere)")
    elif not region:
        cause = ("plain box attention (no region mask): a token chooses boxes by what it "
                 "looks like, not where it lies, and box_attention_kappa near 0 says each box's "
                 "attention does not come from its own tokens: position has not been learnt")
    else:
        cause = ("region attention confines the attention to the boxes, so the write outside "
                 "them is to_out's bias: the boxes cover most of the image or the bias dominates")
    kappa = _metric(row, "box_attention_kappa")
    tries = ["train longer"] + [flag for flag, has in (("a null slot (gatebench train "
                                                       "--null-slot)", null_slot),
                                                      ("region attention (--box-mask)", region))
                                if not has]
    return Finding(
        "not_localised", "warn",
        f"at gate scale {row['gate_scale']:g} the adapter changes the image (effect_norm "
        f"{_ci(norm)}) but not where the boxes are: effect_lift {_ci(lift)} reaches "
        f"{1 + LIFT_MARGIN:g} (1 = uniform){'' if kappa is None else f', box_attention_kappa {_ci(kappa)}'}. Likely "
        f"cause: {cause}. Try: {' or with '.join(tries)}; check single-box layouts apart.",
        label)


def overwrites_stream(rows: Sequence[Mapping[str, Any]], checkpoint: Mapping[str, Any],
                      label: str) -> Finding | None:
    by_scale = {float(r["gate_scale"]): r for r in rows}
    base = _metric(by_scale.get(0.0, {}), "garbled_rate")
    if base is None:
        return None
    trained = checkpoint.get("scale_range")
    for scale in sorted(s for s in by_scale if s > 0):
        garbled = _metric(by_scale[scale], "garbled_rate")
        low = None if garbled is None else garbled.get("ci_low")
        if garbled is None or low is None or not low > base["value"]:
            continue
        norm = _metric(by_scale[scale], "effect_norm")
        strength = "" if norm is None else f"; the adapter's write is {_ci(norm)} of the stream"
        above = (isinstance(trained, (list, tuple)) and len(trained) == 2
                 and trained[1] is not None and scale > float(trained[1]))
        cause = (f"gate scale {scale:g} lies above the trained range "
                 f"[{trained[0]:g}, {trained[1]:g}]" if above and isinstance(trained, (list, tuple))
                 else
                 "the write is strong enough to overwrite what the base model draws")
        return Finding(
            "overwrites_stream", "warn",
            f"garbled_rate rises from {base['value']:.3g} at scale 0 to {_ci(garbled)} at gate "
            f"scale {scale:g}{strength}. Likely cause: {cause}. Try: evaluate and use gate "
            f"scales up to the trained range, or train with gate-scale sampling that covers it.",
            label)
    return None


def write_findings(rows: Sequence[Mapping[str, Any]], checkpoints: Sequence[Mapping[str, Any]],
                   labels: Mapping[str, str]) -> list[Finding]:
    """Every finding of a run: per checkpoint, ``not_localised`` at each gate scale where it
    holds and ``overwrites_stream`` at the first scale where it does."""
    by_path = {c.get("path"): c for c in checkpoints}
    out: list[Finding] = []
    for path in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = [r for r in rows if r["checkpoint"] == path]
        checkpoint, label = by_path.get(path, {}), labels.get(path, str(path))
        out += [f for r in mine if r["gate_scale"] > 0
                for f in [not_localised(r, checkpoint, label)] if f is not None]
        finding = overwrites_stream(mine, checkpoint, label)
        if finding is not None:
            out.append(finding)
    return out

"""Whether two saved runs can be paired, and what differs between them that does not block it.

compare pairs per-sample records of the same layouts and seeds; a different protocol, seed, N or
layout set makes that pairing meaningless, so it is refused with every reason at once. Other
differences (model hashes, sampler settings) are warnings: the numbers still pair, but measure
something else as well. ``precheck_protocol`` checks what it can before `run --baseline` spends
hours generating.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from gatebench.errors import NotComparableError
from gatebench.files import file_sha256
from gatebench.protocol import UNCOND_ALIASES, Protocol
from gatebench.rundir.saved import SavedRun, checkpoint_paths


def run_identity(run: SavedRun) -> dict[str, Any]:
    """What compare.json records of a run: where it is and what makes it comparable."""
    r = run.results
    return {"results": str(run.path), "created": r.get("created"),
            "protocol": r["protocol"].get("name"), "protocol_sha256": r.get("protocol_sha256"),
            "seed": r["seed"], "n_layouts": r["n_layouts"],
            "layout_ids_sha256": r.get("layout_ids_sha256"),
            "checkpoints": [{"path": c["path"], "sha256": c.get("sha256")}
                            for c in r.get("checkpoints", [])]}


def gate_scales(results: dict[str, Any]) -> list[float]:
    """The gate scales a results.json holds, sorted (rounded: 0.5 from any run is 0.5)."""
    return sorted({round(float(row["gate_scale"]), 6) for row in results["results"]})


def comparability_problems(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Every reason the two runs' per-sample records cannot be paired (empty: comparable)."""
    problems = []
    checks = [("protocol name", base["protocol"].get("name"), cand["protocol"].get("name")),
              ("protocol file sha256", base.get("protocol_sha256"), cand.get("protocol_sha256")),
              ("seed", base.get("seed"), cand.get("seed")),
              ("N (layouts)", _population(base)[0], _population(cand)[0]),
              ("layout ids sha256", _population(base)[1], _population(cand)[1])]
    def short(v: Any) -> Any:
        return v[:12] + "..." if isinstance(v, str) and len(v) > 40 else v

    for what, b, c in checks:
        if b != c:
            problems.append(f"{what} {short(b)!r} in the baseline vs {short(c)!r} in the candidate")
    nb, nc = len(checkpoint_paths(base)), len(checkpoint_paths(cand))
    if nb != 1 and nb != nc:
        problems.append(f"{nb} checkpoints in the baseline vs {nc} in the candidate (pairing is "
                        f"by order, or against a single baseline checkpoint)")
    if not set(gate_scales(base)) & set(gate_scales(cand)):
        problems.append(f"no common gate scale (baseline {gate_scales(base)}, candidate "
                        f"{gate_scales(cand)})")
    return problems


def _population(results: dict[str, Any]) -> tuple[Any, Any]:
    """(N, layout ids sha256) of the layouts a run was asked for: a run stopped early by
    `--until-decided` pairs with a full run of the same layouts on the ones it generated."""
    return (results.get("max_layouts", results.get("n_layouts")),
            results.get("max_layout_ids_sha256", results.get("layout_ids_sha256")))


def stopped_early(results: dict[str, Any]) -> bool:
    return bool((results.get("sequential") or {}).get("stopped_early"))


def check_comparable(base: dict[str, Any], cand: dict[str, Any]) -> None:
    problems = comparability_problems(base, cand)
    if problems:
        raise NotComparableError("expected two runs of the same protocol, seeds, layouts and N, "
                                 "got different " + "; ".join(problems))


def precheck_protocol(base: dict[str, Any], protocol: Protocol) -> None:
    """Before an expensive `run --baseline`: what can be checked from the protocol alone."""
    source = Path(protocol.source) if protocol.source else None
    sha = file_sha256(source) if source is not None and source.is_file() else None
    problems = []
    if base["protocol"].get("name") != protocol.name:
        problems.append(f"protocol name {base['protocol'].get('name')!r} in the baseline vs "
                        f"{protocol.name!r} now")
    if base.get("protocol_sha256") != sha:
        problems.append("protocol file sha256 differs from the baseline's")
    if base.get("seed") != protocol.seed:
        problems.append(f"seed {base.get('seed')!r} in the baseline vs {protocol.seed!r} now")
    if problems:
        raise NotComparableError("expected the baseline's protocol and seed, got different "
                                 + "; ".join(problems), hint="rerun the baseline with this "
                                 "protocol or pass the baseline's --protocol/--seed")


def model_warnings(base: dict[str, Any], cand: dict[str, Any]) -> list[str]:
    """Differences that do not block pairing but change what the numbers measure."""
    out = []
    if base.get("schema_version") != cand.get("schema_version"):
        out.append(f"results schema {base.get('schema_version')} in the baseline vs "
                   f"{cand.get('schema_version')} in the candidate: gatebench 0.2 (schema 2) runs "
                   f"the user and GLIGEN families as their references do; rerun the older run")
    bm, cm = base.get("models", {}) or {}, cand.get("models", {}) or {}
    for name in sorted(set(bm) | set(cm)):
        b, c = bm.get(name), cm.get(name)
        key = lambda m: (m.get("sha256"), json.dumps(m.get("weights"), sort_keys=True)) \
            if isinstance(m, dict) else m  # noqa: E731
        if b is None or c is None:
            out.append(f"model '{name}' only in the {'candidate' if b is None else 'baseline'}")
        elif key(b) != key(c):
            out.append(f"model '{name}' differs (hash): its metrics compare different models")
    gen_keys = ("steps", "guidance_scale", "scheduler", "grounding_fraction", "uncond_boxes",
                "height", "width", "dtype")
    bg, cg = base["protocol"].get("generation", {}), cand["protocol"].get("generation", {})
    alias = UNCOND_ALIASES                            # uncond_boxes' names before gatebench 0.2
    for k in gen_keys:
        if alias.get(bg.get(k), bg.get(k)) != alias.get(cg.get(k), cg.get(k)):
            out.append(f"generation.{k} {bg.get(k)!r} in the baseline vs {cg.get(k)!r} in the "
                       f"candidate: images differ for reasons other than the checkpoint")
    return out


def pair_checkpoints(base: Sequence[str], cand: Sequence[str]) -> list[tuple[int, str, str]]:
    """(index, baseline, candidate) by command-line order, or all against one baseline."""
    if len(base) == 1:
        return [(i, base[0], c) for i, c in enumerate(cand)]
    return [(i, b, c) for i, (b, c) in enumerate(zip(base, cand, strict=True))]  # precheck: nb == nc

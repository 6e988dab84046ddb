"""Where the adapter writes: per-image sums over every grounded site and step, kept on the device.

A detector says THAT placement failed; these say WHY, from the adapter's own activations:

* ``effect_in_boxes``: share of the residual energy sum_t ||delta_t||^2 on tokens whose cell
  centre lies in the union of the layout's boxes (each site's own token grid);
* ``effect_lift``: that share over a uniform writer's (each site's union token share, weighted by
  the site's energy): 1 = writes evenly everywhere, > 1 = concentrates in the boxes;
* ``box_attention_kappa``: per box j, s_j = box j's attention mass received from tokens inside
  box j over all the mass it receives, chance-corrected by the pooled token share a_j of box j
  as (s_j - a_j) / (1 - a_j), averaged over boxes (needs >= 2 boxes: with one box the softmax
  over one key is 1 for every token, s_j = a_j by construction);
* ``effect_norm``: RMS ||delta|| / RMS ||h||, h the tensor the residual is added to.

Pooling: every site and grounded step adds its sums (energies, attention masses) as they are, so
a site weighs by what it writes (high-resolution sites have more tokens) and the chance levels are
pooled with the same weights (a uniform writer scores lift 1, a uniform attender kappa 0 exactly).
Sums are split into the first and second half of the grounded steps (``phase``) to show early vs
late. Nothing per token is kept but a ``grid`` x ``grid`` energy-density map per row; the only
host sync is ``results``, once per sampling run.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from gatebench.adapters.box_attention import token_box_mask

ZERO_EFFECT = "the adapter's effect is exactly 0 (deadlock: gate and to_out both 0)"
NO_BOX = "the layout has no box"
ONE_BOX = ("fewer than 2 boxes: with one box the softmax over one key is 1 for every token, so "
           "box attention is uniform by construction")
NO_ATTENTION = "this adapter family exposes no box attention to gatebench"


class WriteMeter:
    """Accumulates the sums for ``rows`` UNet-batch rows with up to ``slots`` boxes."""

    def __init__(self, rows: int, slots: int, device: torch.device | str,
                 grid: int = 32) -> None:
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=torch.float64)  # noqa: E731
        self.grid, self.phase = grid, 0
        self.energy, self.energy_in, self.uniform_in = zeros(2, rows), zeros(2, rows), zeros(2, rows)
        self.stream = zeros(rows)
        self.mass, self.mass_in, self.mass_chance = zeros(rows, slots), zeros(rows, slots), \
            zeros(rows, slots)
        self.attention_seen = False
        self.density = torch.zeros(rows, grid, grid, device=device)
        self._inside: dict[tuple[int, int], torch.Tensor] = {}

    def _in_boxes(self, grounding: Any, length: int) -> torch.Tensor:
        """(B, T, N) float: token cell centre in box j (and box j real); cached per grid."""
        key = (id(grounding.boxes), length)
        if key not in self._inside:
            inside = token_box_mask(grounding.boxes.float(), length, grounding.aspect)
            self._inside[key] = (inside & grounding.mask.bool()[:, None, :]).float()
        return self._inside[key]

    @torch.no_grad()
    def record(self, delta: torch.Tensor, h: torch.Tensor, grounding: Any,
               probs: torch.Tensor | None = None) -> None:
        """One site's residual ``delta`` and stream ``h`` (B, T, D); ``probs`` (B, T, H, N')."""
        b, length, _ = delta.shape
        inside = self._in_boxes(grounding, length)
        union = inside.amax(-1)                                           # (B, T)
        energy = delta.float().pow(2).sum(-1)                             # (B, T)
        total = energy.sum(1).double()
        self.energy[self.phase] += total
        self.energy_in[self.phase] += (energy * union).sum(1).double()
        self.uniform_in[self.phase] += union.mean(1).double() * total
        self.stream += h.float().pow(2).sum((1, 2)).double()
        rows = max(1, round(math.sqrt(length * grounding.aspect)))
        cells = energy.view(b, 1, rows, length // rows) * length         # energy per unit area
        self.density += F.interpolate(cells, size=(self.grid, self.grid), mode="bilinear",
                                      antialias=True, align_corners=False)[:, 0]
        if probs is not None:
            self.attention_seen = True
            n = inside.shape[-1]
            p = probs[..., :n].float().mean(2)                            # heads averaged
            mass = p.sum(1).double()
            self.mass += mass
            self.mass_in += (p * inside).sum(1).double()
            self.mass_chance += inside.mean(1).double() * mass

    def results(self, rows: Sequence[int], mask: torch.Tensor,
                attention_needs_two: bool = True) -> list[dict[str, Any]]:
        """Per row: the four measurements (None + ``*_reason`` where not computed) and the
        early / late split of ``effect_in_boxes`` and ``effect_lift``."""
        index = torch.as_tensor(list(rows), device=self.energy.device)
        energy, energy_in, uniform_in = (t.index_select(1, index).cpu() for t in
                                         (self.energy, self.energy_in, self.uniform_in))
        stream = self.stream.index_select(0, index).cpu()
        mass, mass_in, chance = (t.index_select(0, index).cpu() for t in
                                 (self.mass, self.mass_in, self.mass_chance))
        boxes = mask.index_select(0, index.to(mask.device)).bool().cpu()
        out = []
        for i in range(len(index)):
            out.append(_row(energy[:, i], energy_in[:, i], uniform_in[:, i], float(stream[i]),
                            mass[i], mass_in[i], chance[i], boxes[i], self.attention_seen,
                            attention_needs_two))
        return out

    def maps(self, rows: Sequence[int]) -> torch.Tensor:
        """(R, grid, grid) energy density of the residual, each scaled to a maximum of 1."""
        density = self.density.index_select(0, torch.as_tensor(list(rows),
                                                                device=self.density.device))
        peak = density.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)
        return (density / peak).cpu()


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _row(energy: torch.Tensor, energy_in: torch.Tensor, uniform_in: torch.Tensor, stream: float,
         mass: torch.Tensor, mass_in: torch.Tensor, chance: torch.Tensor, boxes: torch.Tensor,
         attention_seen: bool, needs_two: bool) -> dict[str, Any]:
    total, total_in, total_uniform = (float(t.sum()) for t in (energy, energy_in, uniform_in))
    row: dict[str, Any] = {"effect_norm": math.sqrt(total / stream) if stream > 0 else None,
                           "effect_in_boxes": None, "effect_lift": None,
                           "box_attention_kappa": None, "n_kappa_boxes": 0}
    if total == 0:
        reason = ZERO_EFFECT
        row.update(effect_in_boxes_reason=reason, effect_lift_reason=reason,
                   box_attention_kappa_reason=reason)
        return row
    n_boxes = int(boxes.sum())
    if n_boxes == 0:
        row.update(effect_in_boxes_reason=NO_BOX, effect_lift_reason=NO_BOX,
                   box_attention_kappa_reason=NO_BOX)
        return row
    row["effect_in_boxes"] = total_in / total
    row["effect_lift"] = _share(total_in, total_uniform)
    for phase, name in enumerate(("early", "late")):
        row[f"effect_in_boxes_{name}"] = _share(float(energy_in[phase]), float(energy[phase]))
        row[f"effect_lift_{name}"] = _share(float(energy_in[phase]), float(uniform_in[phase]))
    if not attention_seen:
        row["box_attention_kappa_reason"] = NO_ATTENTION
    elif needs_two and n_boxes < 2:
        row["box_attention_kappa_reason"] = ONE_BOX
    else:
        kappas = []
        for j in torch.nonzero(boxes).flatten().tolist():
            if float(mass[j]) > 0:
                s, a = float(mass_in[j] / mass[j]), float(chance[j] / mass[j])
                if a < 1:
                    kappas.append((s - a) / (1 - a))
        if kappas:
            row["box_attention_kappa"] = sum(kappas) / len(kappas)
            row["n_kappa_boxes"] = len(kappas)
        else:
            row["box_attention_kappa_reason"] = "no box receives attention from a token outside it"
    return row

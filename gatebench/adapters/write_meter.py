"""Where the adapter writes: per-image sums over every grounded site and step, kept on the device.

A detector says THAT placement failed; these say WHY, from the adapter's own activations:

* ``effect_in_boxes``: share of the residual energy sum_t ||delta_t||^2 on tokens whose cell
  centre lies in the union of the layout's boxes (each site's own token grid);
* ``effect_lift``: that share over a uniform writer's (each site's union token share, weighted by
  the site's energy): 1 = writes evenly everywhere, > 1 = concentrates in the boxes;
* ``box_attention_kappa``: per box j, s_j = box j's attention mass received from tokens inside
  box j over all the mass it receives, chance-corrected by the pooled token share a_j of box j
  as (s_j - a_j) / (1 - a_j), averaged over boxes (needs >= 2 boxes unless the adapter has a
  null slot: with one box and no null slot the softmax over one key is 1 for every token, so
  s_j = a_j by construction);
* ``effect_norm``: RMS ||delta|| / RMS ||h||, h the tensor the residual is added to.

Pooling: every site and grounded step adds its sums (energies, attention masses) as they are, so
a site weighs by what it writes (high-resolution sites have more tokens) and the chance levels are
pooled with the same weights (a uniform writer scores lift 1, a uniform attender kappa 0 exactly).
Sums are split into the first and second half of the grounded steps (``phase``) to show early vs
late. Per token grid a site adds its energy per token (and, for the user family, its box
attention per token) to running sums in place; in-box shares, chance levels and the
``grid`` x ``grid`` energy-density map are derived from those sums once, in ``results`` and
``maps`` (the one host sync, once per sampling run).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch.nn import functional as F

from gatebench.adapters.box_attention import token_box_mask

if TYPE_CHECKING:   # adapters/user.py imports this module
    from gatebench.adapters.user import Grounding

ZERO_EFFECT = "the adapter's effect is exactly 0 (deadlock: gate and to_out both 0)"
NO_BOX = "the layout has no box"
ONE_BOX = ("fewer than 2 boxes: with one box the softmax over one key is 1 for every token, so "
           "box attention is uniform by construction")
NO_ATTENTION = "this adapter family exposes no box attention to gatebench"


class WriteMeter:
    """Accumulates, for ``rows`` UNet-batch rows with up to ``slots`` boxes, per token grid: the
    residual energy per token (early and late steps) and the box attention per token.

    A site adds to these in place (a few kernels, no host sync); everything that needs the
    boxes (in-box shares, chance levels, the map) is derived once, in ``results`` / ``maps``,
    because it is linear in the per-token sums.
    """

    def __init__(self, rows: int, slots: int, device: torch.device | str,
                 grid: int = 32) -> None:
        self.rows, self.slots, self.device = rows, slots, device
        self.grid, self.phase = grid, 0
        self.stream = torch.zeros(rows, device=device, dtype=torch.float64)
        self._energy: dict[int, torch.Tensor] = {}     # T -> (2, B, T) float32
        self._attention: dict[int, torch.Tensor] = {}  # T -> (B, T, N) float32, heads summed
        self._grounding: Grounding | None = None
        self.null_slot = False      # a null slot makes one box localisable: kappa counts it

    @property
    def attention_seen(self) -> bool:
        return bool(self._attention)

    @torch.no_grad()
    def record(self, delta: torch.Tensor, h: torch.Tensor, grounding: Grounding,
               probs: torch.Tensor | None = None) -> None:
        """One site's residual ``delta`` and stream ``h`` (B, T, D); ``probs`` (B, T, H, N')."""
        b, length, _ = delta.shape
        self._grounding = grounding
        energy = self._energy.get(length)
        if energy is None:
            energy = self._energy[length] = delta.new_zeros(2, b, length, dtype=torch.float32)
        energy[self.phase].add_(_squared_norm(delta))
        self.stream.add_(_squared_norm(h.flatten(1)))
        if probs is not None:
            n = self.slots
            self.null_slot = probs.shape[-1] > n
            mass = self._attention.get(length)
            if mass is None:
                mass = self._attention[length] = delta.new_zeros(b, length, n,
                                                                 dtype=torch.float32)
            mass.add_(probs[..., :n].sum(2, dtype=torch.float32))

    def _inside(self, length: int) -> torch.Tensor:
        """(B, T, N) float: token cell centre in box j (and box j real), on this grid."""
        g = self._grounding
        assert g is not None, "record() sets the grounding before any grid is measured"
        inside = token_box_mask(g.boxes.float(), length, g.aspect)
        return (inside & g.mask.bool()[:, None, :]).float()

    def _sums(self) -> dict[str, torch.Tensor]:
        """Per-row sums over every grid: energies (2, B), attention masses (B, N)."""
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        out = {"energy": zeros(2, self.rows), "energy_in": zeros(2, self.rows),
               "uniform_in": zeros(2, self.rows), "mass": zeros(self.rows, self.slots),
               "mass_in": zeros(self.rows, self.slots),
               "mass_chance": zeros(self.rows, self.slots)}
        for length, energy in self._energy.items():
            inside = self._inside(length)
            union = inside.amax(-1)                                       # (B, T)
            total = energy.sum(-1)
            out["energy"] += total.double().cpu()
            out["energy_in"] += (energy * union).sum(-1).double().cpu()
            out["uniform_in"] += (union.mean(1) * total).double().cpu()
            mass = self._attention.get(length)
            if mass is not None:
                received = mass.sum(1)                                    # (B, N)
                out["mass"] += received.double().cpu()
                out["mass_in"] += (mass * inside).sum(1).double().cpu()
                out["mass_chance"] += (inside.mean(1) * received).double().cpu()
        return out

    def results(self, rows: Sequence[int], mask: torch.Tensor) -> list[dict[str, Any]]:
        """Per row: the four measurements (None + ``*_reason`` where not computed) and the
        early / late split of ``effect_in_boxes`` and ``effect_lift``."""
        rows = list(rows)
        if self._grounding is None:        # no grounded site ran: nothing was written
            return [_row(torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.0,
                         torch.zeros(0), torch.zeros(0), torch.zeros(0),
                         mask[r].bool().cpu(), False, True) for r in rows]
        sums = self._sums()
        stream = self.stream.cpu()
        boxes = mask.bool().cpu()
        return [_row(sums["energy"][:, r], sums["energy_in"][:, r], sums["uniform_in"][:, r],
                     float(stream[r]), sums["mass"][r], sums["mass_in"][r],
                     sums["mass_chance"][r], boxes[r], self.attention_seen,
                     not self.null_slot) for r in rows]

    def maps(self, rows: Sequence[int]) -> torch.Tensor:
        """(R, grid, grid) energy density of the residual (energy per unit image area, pooled
        over grids), each scaled to a maximum of 1."""
        index = torch.as_tensor(list(rows), device=self.device)
        density = torch.zeros(len(index), self.grid, self.grid)
        for length, energy in self._energy.items():
            assert self._grounding is not None      # an energy is only recorded with it
            side = max(1, round(math.sqrt(length * self._grounding.aspect)))
            cells = energy.sum(0).index_select(0, index).view(-1, 1, side, length // side)
            density += F.interpolate(cells.float().cpu() * length, size=(self.grid, self.grid),
                                     mode="bilinear", antialias=True, align_corners=False)[:, 0]
        peak = density.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)
        return density / peak


def _squared_norm(x: torch.Tensor) -> torch.Tensor:
    """||x||^2 over the last dimension in float32: one kernel for float32 input (the user
    family's), a float32-accumulating norm for half precision (GLIGEN's fusers)."""
    if x.dtype == torch.float32:
        return torch.linalg.vecdot(x, x)
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32) ** 2


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

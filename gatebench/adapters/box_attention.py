"""The user adapter's gated box attention, computed at the cost of its N box tokens.

The user's module attends from T image tokens (T up to 4096) to N <= 30 box tokens at width D, with
8 heads of width d = D/8: ``to_q`` on every image token, attention, ``to_out`` on every token.
Both projections are T x D x D. Per head h, with ``K_h``/``V_h`` the box keys/values (N x d) and
``Wq_h`` (d x D), ``Wo_h`` (D x d) the heads' slices of ``to_q``/``to_out``::

    logits_h = (H Wq_h^T) K_h^T / sqrt(d) = H (K_h Wq_h / sqrt(d))^T
    out      = sum_h P_h V_h Wo_h^T + b   = [P_1 .. P_8] [V_1 Wo_1^T; ..; V_8 Wo_8^T] + b

``K_h Wq_h`` and ``V_h Wo_h^T`` are N x D per sample and depend on the boxes only, so they are
computed once per grounding (``BoxKeys``) and every image token costs two T x D x 8N products:
at N = 8 that is 5x (D 640) to 10x (D 1280) fewer FLOPs than the two T x D x D projections, the
same float32 function up to rounding (held to the user's forward by tests/test_parity_user.py and
to the textbook form by tests/test_box_attention.py; timed in bench/adapter_bench.py).

Masking is the user's: a masked box never counts; a sample with no valid box attends to nothing
and the adapter adds ``s * tanh(gate) * to_out.bias`` alone. Masked boxes' logits get half the dtype's
minimum added (not -inf), so an all-masked row softmaxes to a finite uniform over box values that
are exactly zero (``BoxKeys.values`` is zeroed there): no NaN, no ``where``, no host sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gatebench.errors import ProtocolError


@dataclass(frozen=True)
class BoxKeys:
    """What one grounding contributes at one adapter width, independent of the image tokens.

    Rows are head-major (row ``h * slots + j`` is box ``j`` seen by head ``h``), so the logits of
    all heads come from one batched product and their softmax is a view of it.
    """

    keys: torch.Tensor          # (B, heads*slots, D): to_k(context) folded through to_q, / sqrt(d)
    values: torch.Tensor        # (B, heads*slots, D): to_v(context) through to_out, * s*tanh(gate)
    bias: torch.Tensor          # (B, 1, D): s * tanh(gate) * to_out.bias
    logit_bias: torch.Tensor    # (B, 1, heads*slots): 0 for a valid box, float32 min if masked
    valid: torch.Tensor         # (B, slots) bool: which slots a token may attend to
    heads: int

    @property
    def slots(self) -> int:
        return int(self.valid.shape[1])


class GatedAttention(nn.Module):
    """Image tokens attend to box tokens; returns the gated residual tanh(gate) * to_out(attn).

    Parameters keep the user's names and shapes (``to_q``, ``to_k``, ``to_v``, ``to_out``,
    ``gate``); only the order of the products differs (module docstring).
    """

    def __init__(self, dim: int, heads: int = 8, null_slot: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"expected width divisible by {heads} heads, got {dim}")
        self.heads = heads
        self.null_slot = null_slot
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.zeros(1))

    def prepare(self, context: torch.Tensor, mask: torch.Tensor,
                scale: float | torch.Tensor = 1.0) -> BoxKeys:
        """Box tokens (B, N, D) and their mask (B, N) -> ``BoxKeys``, gate and gate scale folded in.

        ``scale``: the inference gate scale, a number or one per sample (B,).
        """
        b, n, dim = context.shape
        heads, width = self.heads, dim // self.heads
        k, v = self.to_k(context), self.to_v(context)
        valid = mask.bool()
        if self.null_slot:
            # A constant zero key/value every token may attend to instead of a box. Without it a
            # layout with ONE box cannot be localised: softmax over a single key is 1 everywhere,
            # so every token receives the same value wherever the box is.
            k = torch.cat([k, k.new_zeros(b, 1, dim)], dim=1)
            v = torch.cat([v, v.new_zeros(b, 1, dim)], dim=1)
            valid = torch.cat([valid, valid.new_ones(b, 1)], dim=1)
            n += 1
        wq = self.to_q.weight.view(heads, width, dim)                      # Wq_h: (H, d, D)
        wo = self.to_out.weight.view(dim, heads, width).permute(1, 2, 0)   # Wo_h^T: (H, d, D)

        def fold(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            """(B, N, D) box tokens, per head times (H, d, D) -> (B, H*N, D), head-major."""
            per_head = x.reshape(b * n, heads, width).transpose(0, 1)        # (H, B*N, d)
            folded = torch.bmm(per_head, weight).view(heads, b, n, dim)      # no weight copies
            return folded.transpose(0, 1).reshape(b, heads * n, dim)

        keys = fold(k, wq) * (1.0 / math.sqrt(width))
        gain = torch.tanh(self.gate).to(v.dtype)
        if isinstance(scale, torch.Tensor):
            gain = scale.to(v.dtype).view(-1, 1, 1) * gain                 # (B, 1, 1)
        else:
            gain = (scale * gain).view(1, 1, 1)
        head_valid = valid[:, None, :].expand(b, heads, n).reshape(b, 1, heads * n)
        values = fold(v, wo)
        # masked slots' values are exactly 0 (so an all-masked row's uniform softmax adds 0)
        values = values * (head_valid.transpose(1, 2).to(values.dtype) * gain)
        bias = (gain * self.to_out.bias.to(v.dtype)).expand(b, 1, dim)
        floor = torch.finfo(keys.dtype).min / 2     # half: adding a logit cannot overflow
        logit_bias = torch.zeros(b, 1, heads * n, dtype=keys.dtype, device=keys.device)
        logit_bias = logit_bias.masked_fill(~head_valid, floor)
        return BoxKeys(keys, values, bias, logit_bias, valid, heads)

    def attend(self, h: torch.Tensor, box: BoxKeys,
               region: torch.Tensor | None = None) -> torch.Tensor:
        """The scaled, gated residual for image tokens ``h`` (B, T, D): two batched products.

        ``region`` (B, T, N), optional: which boxes each token may attend to (box_mask).
        """
        return self.attend_with_probs(h, box, region)[0]

    def attend_with_probs(self, h: torch.Tensor, box: BoxKeys, region: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """``attend`` and the attention probabilities (B, T, heads, slots) it used."""
        b, length, _ = h.shape
        logits = torch.baddbmm(box.logit_bias, h, box.keys.transpose(1, 2))
        logits = logits.view(b, length, box.heads, box.slots)
        if region is None:
            probs = logits.softmax(-1)
        else:
            allowed = region.bool()
            if self.null_slot:
                allowed = torch.cat([allowed, allowed.new_ones(b, length, 1)], dim=-1)
            allowed = (allowed & box.valid[:, None, :])[:, :, None, :]     # (B, T, 1, N)
            probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
            # a token with no allowed box attends to nothing: 0 before to_out, not NaN
            probs = torch.where(allowed.any(-1, keepdim=True), probs, torch.zeros_like(probs))
        return torch.baddbmm(box.bias, probs.view(b, length, -1), box.values), probs

    def forward(self, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                region: torch.Tensor | None = None) -> torch.Tensor:
        """tanh(gate) * to_out(attention(h -> context)), unscaled (``prepare`` + ``attend``)."""
        return self.attend(h, self.prepare(context, mask), region)


def token_box_mask(boxes: torch.Tensor, length: int, aspect: float = 1.0) -> torch.Tensor:
    """(B, N, 4) normalised xyxy boxes -> (B, L, N): token cell centre inside the box.

    The token grid is recovered from L and the image's height/width ``aspect``. A box too small
    to contain any cell centre at this resolution still owns the cell holding its own centre.
    """
    rows = max(1, round(math.sqrt(length * aspect)))
    cols = length // rows
    if rows * cols != length:
        raise ProtocolError(f"expected {length} image tokens to form a grid of aspect "
                            f"{aspect:.3g} for box_mask, got {rows}x{cols}",
                            hint="use a [generation] height and width divisible by the UNet's "
                                 "total downsampling")
    ys = (torch.arange(rows, device=boxes.device, dtype=boxes.dtype) + 0.5) / rows
    xs = (torch.arange(cols, device=boxes.device, dtype=boxes.dtype) + 0.5) / cols
    cy, cx = (c.reshape(1, -1, 1) for c in torch.meshgrid(ys, xs, indexing="ij"))
    x0, y0, x1, y1 = (boxes[..., i].unsqueeze(1) for i in range(4))   # (B, 1, N)
    inside = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
    row = ((y0 + y1) / 2 * rows).long().clamp(0, rows - 1)
    col = ((x0 + x1) / 2 * cols).long().clamp(0, cols - 1)
    token = torch.arange(length, device=boxes.device).view(1, -1, 1)
    return inside | (token == row * cols + col)

"""The gated box attention in its textbook form: ``to_q`` on every image token, attention, then
``to_out`` on every token (gatebench's form before the reassociation of issue 19, variants
included). Nothing here imports gatebench: tests and bench/adapter_bench.py hold
``gatebench.adapters.box_attention`` to it, and the bench times the two side by side. It lives in
bench/ because bench/ never imports tests/; the tests import it from here.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Records every aten operator run inside it (``_local_scalar_dense`` = a host sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def textbook_gated_attention(module, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                             region: torch.Tensor | None = None,
                             scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """s * tanh(gate) * to_out(softmax(q k^T / sqrt(d)) v) with ``module``'s weights.

    ``module``: anything with ``to_q``/``to_k``/``to_v``/``to_out``/``gate``/``heads`` and
    ``null_slot``; ``region`` (B, L, N): which boxes each token may attend to.
    """
    b, length, dim = h.shape
    heads = module.heads
    split = lambda x: x.view(b, -1, heads, dim // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(module.to_q(h)), split(module.to_k(context)), split(module.to_v(context))
    valid = mask.bool()[:, None, None, :]                              # (B, 1, 1, N)
    if region is not None:
        valid = valid & region.bool()[:, None, :, :]                   # (B, 1, L, N)
    if module.null_slot:
        zeros = q.new_zeros(b, heads, 1, dim // heads)
        k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
        valid = torch.cat([valid, valid.new_ones(*valid.shape[:-1], 1)], dim=-1)
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=valid)
    attn = torch.where(valid.any(-1, keepdim=True), attn, torch.zeros_like(attn))
    attn = attn.transpose(1, 2).reshape(b, length, dim)
    if isinstance(scale, torch.Tensor):
        scale = scale.to(h.dtype).view(-1, 1, 1)
    return scale * (torch.tanh(module.gate) * module.to_out(attn))

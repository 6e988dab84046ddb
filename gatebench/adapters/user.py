"""The user's adapter family: one gated box-attention adapter per UNet width, after each attn2.

Key for key compatible with the user's checkpoints (shared/seed/formats.md). At every
cross-attention output ``h`` of width D::

    context = position_net(boxes) + text_proj(phrases)        (masked by the valid-box mask)
    out     = h + tanh(gate) * to_out(attention(q=h, k=v=context))
    result  = h + s * (out - h)                                (s: the inference gate scale)

formats.md gives the Fourier buffer (``freqs = linspace(0, 1, 8)``) but not the formula; we use
NeRF-style frequencies ``pi * 2**(7 * freqs)`` (1..128 cycles over the unit box), recorded in the
adapter config as ``fourier = "pi*2^(7f)"`` so a future variant can be told apart.

Two opt-in, parameter-free variants (recorded in the adapter config, off for the user's own
checkpoints): ``null_slot`` (a zero key/value any token may pick instead of a box) and
``box_mask`` (region attention: a token may attend only to the boxes that contain it, as in
masked-attention layout methods; the adapter then learns *what* to draw in a box, not *where*
the box is, which plain box attention does not learn in a CPU budget, see train/world/README.md).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from gatebench.errors import CheckpointError, ProtocolError

INIT_SCHEMES = {
    # name: (gate value, zero to_out?)  -- the user's history, see formats.md
    "gligen": (0.0, False),    # identity at init AND gradients flow (GLIGEN's own choice)
    "zero-out": (0.1, True),   # the user's current code
    "legacy": (3.0, False),    # random to_out + large gate: the collapse the user saw
    "deadlock": (0.0, True),   # both zero: neither can ever move
}


class PositionNet(nn.Module):
    """Normalised xyxy boxes -> Fourier features -> an MLP to the adapter width."""

    def __init__(self, dim: int, num_freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.linspace(0, 1, num_freqs))
        self.fourier_embedder = nn.Sequential(nn.Linear(4 * num_freqs * 2, dim // 2), nn.SiLU(),
                                              nn.Linear(dim // 2, dim))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        scales = math.pi * torch.pow(2.0, (self.freqs.numel() - 1) * self.freqs)
        angles = boxes.unsqueeze(-1) * scales.to(boxes.dtype)           # (B, N, 4, F)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        return self.fourier_embedder(features.to(self.fourier_embedder[0].weight.dtype))


class GatedAttention(nn.Module):
    """Image tokens attend to box tokens; returns the gated residual tanh(gate) * to_out(attn)."""

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

    def forward(self, h: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
                region: torch.Tensor | None = None) -> torch.Tensor:
        """``region`` (B, L, N), optional: which boxes each token may attend to (box_mask)."""
        b, length, dim = h.shape
        split = lambda x: x.view(b, -1, self.heads, dim // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.to_q(h)), split(self.to_k(context)), split(self.to_v(context))
        valid = mask.bool()[:, None, None, :]                              # (B, 1, 1, N)
        if region is not None:
            valid = valid & region.bool()[:, None, :, :]                   # (B, 1, L, N)
        if self.null_slot:
            # A constant zero key/value every token may attend to instead of a box. Without it a
            # layout with ONE box cannot be localised: softmax over a single key is 1 everywhere,
            # so every token receives the same value wherever the box is.
            zeros = q.new_zeros(b, self.heads, 1, dim // self.heads)
            k, v = torch.cat([k, zeros], dim=2), torch.cat([v, zeros], dim=2)
            valid = torch.cat([valid, valid.new_ones(*valid.shape[:-1], 1)], dim=-1)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=valid)
        # A row with no valid box attends to nothing: its output is 0, not NaN.
        attn = torch.where(valid.any(-1, keepdim=True), attn, torch.zeros_like(attn))
        attn = attn.transpose(1, 2).reshape(b, length, dim)
        return torch.tanh(self.gate) * self.to_out(attn)


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


class SpatialAdapter(nn.Module):
    def __init__(self, dim: int, text_dim: int, heads: int = 8, num_freqs: int = 8,
                 null_slot: bool = False, box_mask: bool = False) -> None:
        super().__init__()
        self.box_mask = box_mask
        self.position_net = PositionNet(dim, num_freqs)
        self.text_proj = nn.Linear(text_dim, dim)
        self.gated_attn = GatedAttention(dim, heads, null_slot)

    def delta(self, h: torch.Tensor, grounding: "Grounding") -> torch.Tensor:
        """s * tanh(gate) * to_out(attention(h -> boxes)): what the adapter adds to ``h``."""
        dtype = self.text_proj.weight.dtype
        mask = grounding.mask.to(dtype)
        context = self.position_net(grounding.boxes.to(dtype)) + self.text_proj(grounding.phrases.to(dtype))
        context = context * mask.unsqueeze(-1)
        region = (token_box_mask(grounding.boxes, h.shape[1], grounding.aspect)
                  if self.box_mask else None)
        delta = self.gated_attn(h.to(dtype), context, mask, region).to(h.dtype)
        scale = grounding.scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(h.dtype).view(-1, 1, 1)
        return scale * delta

    def forward(self, h: torch.Tensor, grounding: "Grounding") -> torch.Tensor:
        return h + self.delta(h, grounding)


QUERY_SOURCES = ("stream", "attn2_output")


class AdapterSet(nn.ModuleDict):
    """``dim_{D}`` -> SpatialAdapter, exactly the user's ModuleDict layout.

    ``query`` says what ``h`` is (formats.md: "at each cross-attention (attn2) output h"):
    ``"stream"`` (default) = the block's hidden states right after the cross-attention residual,
    which carry each token's position; ``"attn2_output"`` = attn2's own output before the residual,
    a mix of text values that carries little position. Both read the same keys; the choice is
    recorded in gatebench checkpoints and results. ``null_slot`` (off for the user's own
    checkpoints, which have no such thing) adds a parameter-free zero key/value, see GatedAttention;
    ``box_mask`` (also off for them) restricts each token to the boxes containing it.
    """

    def __init__(self, widths: list[int] | tuple[int, ...], text_dim: int, heads: int = 8,
                 num_freqs: int = 8, query: str = "stream", null_slot: bool = False,
                 box_mask: bool = False) -> None:
        if query not in QUERY_SOURCES:
            raise ValueError(f"expected query in {QUERY_SOURCES}, got {query!r}")
        super().__init__({f"dim_{w}": SpatialAdapter(w, text_dim, heads, num_freqs, null_slot,
                                                     box_mask)
                          for w in sorted(set(widths))})
        self.config = {"family": "user", "widths": sorted(set(widths)), "text_dim": text_dim,
                       "heads": heads, "num_freqs": num_freqs, "fourier": "pi*2^(7f)",
                       "query": query, "null_slot": null_slot, "box_mask": box_mask}

    @classmethod
    def from_config(cls, config: dict) -> "AdapterSet":
        return cls(config["widths"], config["text_dim"], config.get("heads", 8),
                   config.get("num_freqs", 8), config.get("query", "stream"),
                   bool(config.get("null_slot", False)), bool(config.get("box_mask", False)))

    @classmethod
    def config_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        """Infer widths and text_dim from a user checkpoint's keys and shapes."""
        widths, text_dim = [], None
        for key, tensor in state.items():
            if key.endswith(".text_proj.weight") and key.startswith("dim_"):
                widths.append(int(key.split(".")[0][4:]))
                text_dim = int(tensor.shape[1])
        freqs = next((t for k, t in state.items() if k.endswith("position_net.freqs")), None)
        if not widths or text_dim is None:
            raise CheckpointError("expected 'dim_{D}.text_proj.weight' keys to infer the adapter "
                                  f"shape, got {sorted(state)[:4]}")
        return {"family": "user", "widths": sorted(widths), "text_dim": text_dim, "heads": 8,
                "num_freqs": int(freqs.numel()) if freqs is not None else 8, "fourier": "pi*2^(7f)",
                "query": "stream", "null_slot": False, "box_mask": False}

    def gates(self) -> dict[str, torch.Tensor]:
        return {name: adapter.gated_attn.gate for name, adapter in self.items()}


def apply_init(adapters: AdapterSet, scheme: str, gate_value: float | None = None) -> None:
    """Initialise gates and output projections per scheme (recorded in every checkpoint)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"expected init scheme in {sorted(INIT_SCHEMES)}, got {scheme!r}")
    default_gate, zero_out = INIT_SCHEMES[scheme]
    with torch.no_grad():
        for adapter in adapters.values():
            adapter.gated_attn.gate.fill_(default_gate if gate_value is None else gate_value)
            if zero_out:
                adapter.gated_attn.to_out.weight.zero_()
                adapter.gated_attn.to_out.bias.zero_()


@dataclass
class Grounding:
    """Per-call box conditioning, sized to the UNet batch (CFG halves included)."""

    boxes: torch.Tensor                 # (B, N, 4) normalised xyxy
    phrases: torch.Tensor               # (B, N, text_dim)
    mask: torch.Tensor                  # (B, N) 1 = real box
    scale: float | torch.Tensor = 1.0   # gate scale, scalar or per sample (B,)
    aspect: float = 1.0                 # image height / width: the token grid's shape (box_mask)


def attn2_widths(unet: nn.Module) -> dict[str, int]:
    """Name -> width of every cross-attention (attn2) module in a diffusers UNet."""
    out = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2") and hasattr(module, "to_out"):
            out[name] = int(module.to_out[0].out_features)
    return out


class Grounded:
    """Holds the grounding of the UNet call in progress; hooks read ``self.grounding``."""

    grounding: Grounding | None = None

    @contextmanager
    def grounded(self, grounding: Grounding | None) -> Iterator[None]:
        previous, self.grounding = self.grounding, grounding
        try:
            yield
        finally:
            self.grounding = previous


class Injection(Grounded):
    """Forward hooks that apply the adapters at every attn2 while a grounding is set."""

    def __init__(self, unet: nn.Module, adapters: AdapterSet) -> None:
        sites = attn2_widths(unet)
        unet_widths = sorted(set(sites.values()))
        if sorted(adapters.config["widths"]) != unet_widths:
            raise CheckpointError(
                f"expected adapter widths to match the base UNet's cross-attention widths "
                f"{unet_widths}, got adapter widths {adapters.config['widths']}",
                hint="this checkpoint was trained for a different base model")
        self.grounding: Grounding | None = None
        self.handles = []
        self.query = adapters.config.get("query", "stream")
        modules = dict(unet.named_modules())
        for name, width in sites.items():
            adapter = adapters[f"dim_{width}"]
            stream: dict[str, torch.Tensor] = {}
            if self.query == "stream":
                block = modules[name.rsplit(".", 1)[0]]
                norm = getattr(block, "norm2", None)
                if norm is None:
                    raise CheckpointError(f"expected a transformer block with norm2 around {name} "
                                          f"for query='stream', got {type(block).__name__}")
                self.handles.append(norm.register_forward_pre_hook(self._capture(stream)))
            self.handles.append(modules[name].register_forward_hook(self._hook(adapter, stream)))

    def _capture(self, stream: dict[str, torch.Tensor]):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            if self.grounding is not None:
                stream["x"] = inputs[0]       # the residual stream entering the cross-attention
        return hook

    def _hook(self, adapter: SpatialAdapter, stream: dict[str, torch.Tensor]):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self.grounding is None:
                return None
            h = stream.pop("x") + output if self.query == "stream" else output
            return output + adapter.delta(h, self.grounding)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def inject(unet: nn.Module, adapters: AdapterSet) -> Injection:
    return Injection(unet, adapters)

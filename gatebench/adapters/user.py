"""The user's adapter family: one gated box-attention adapter per UNet width, at every attn2.

By default this IS the user's own module (ARCHITECTURE.md, "The user's formats"; restated
independently in tests/reference_user.py and held to it by tests/test_parity_*.py). At each
cross-attention (attn2) of width D, with ``h`` = attn2's OUTPUT (before the block's residual)::

    fourier = [sin(2 pi f c), cos(2 pi f c)] for c in x1, y1, x2, y2, f = the ``freqs`` buffer
    context = (position_net(fourier) + text_proj(phrases)) * mask   (text_proj skipped if width D)
    attn    = softmax(q k^T / sqrt(d), masked boxes' logits -1e4) v   8 heads, float32
    out     = h + tanh(gate) * to_out(attn)
    result  = h + s * (out - h)                                        (s: the inference gate scale)

The attention itself (adapters/box_attention.py) is computed at the cost of the box tokens: the
box keys and values are folded through ``to_q`` and ``to_out`` once per grounding and width, so
each image token costs two T x D x 8N products instead of two T x D x D projections (same
numbers up to float32 rounding). A masked box never counts; a layout with no valid box adds
``s * tanh(gate) * to_out.bias`` alone, as in the user's code (masked context is zero and
``to_v`` has no bias). A layout with ONE box gives every image token the same value
(softmax over one key), which the gates finding ``single_box_unlocalisable`` reports. On a
non-Kolors base the user's inference passes no phrase vectors (``phrases = "kolors-only"``): the
context is then the boxes' position features alone.

Opt-in variants, each recorded in the adapter config (gatebench checkpoints carry theirs, so the
shipped world's series keep meaning what they meant when trained):

* ``fourier = "nerf"``: octave frequencies ``pi * 2**(7 f)`` (gatebench's earlier guess);
* ``query = "stream"``: queries from the residual stream after attn2 (carries position);
* ``text_proj = "always"``: text_proj applied even when the phrase width equals D;
* ``phrases = "always"``: phrase vectors on every base kind, not only Kolors;
* ``null_slot``: a zero key/value any token may pick instead of a box;
* ``box_mask``: region attention, a token attends only to the boxes containing it.
"""
from __future__ import annotations

import math
from collections.abc import ItemsView, ValuesView
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence, cast

import torch
from torch import nn

from gatebench.adapters.box_attention import BoxKeys, GatedAttention, token_box_mask
from gatebench.adapters.write_meter import WriteMeter
from gatebench.errors import CheckpointError

INIT_SCHEMES = {
    # name: (gate value, zero to_out?)  -- the user's history (ARCHITECTURE.md, "The user's formats")
    "gligen": (0.0, False),    # identity at init AND gradients flow (GLIGEN's own choice)
    "zero-out": (0.1, True),   # the user's current code
    "legacy": (3.0, False),    # random to_out + large gate: the collapse the user saw
    "deadlock": (0.0, True),   # both zero: neither can ever move
}


# Variant names (recorded in every adapter config); the first of each is the user's reference.
FOURIER_KINDS = ("user", "nerf")
QUERY_SOURCES = ("attn2_output", "stream")
TEXT_PROJ_RULES = ("user", "always")
# The user's inference passes phrase vectors only on Kolors; elsewhere the context is the boxes'
# position features alone. "always" passes them for every base kind (gatebench < 0.2).
PHRASE_RULES = ("kolors-only", "always")
_FOURIER_ALIASES = {"pi*2^(7f)": "nerf"}    # how gatebench checkpoints before 0.2 name "nerf"


def fourier_frequencies(freqs: torch.Tensor, kind: str) -> torch.Tensor:
    """Angular frequencies per ``freqs`` entry: 2*pi*f (the user's) or pi*2^(7f) (NeRF octaves)."""
    if kind == "user":
        return 2 * math.pi * freqs
    if kind == "nerf":
        return math.pi * torch.pow(2.0, (freqs.numel() - 1) * freqs)
    raise ValueError(f"expected fourier in {FOURIER_KINDS}, got {kind!r}")


class PositionNet(nn.Module):
    """Normalised xyxy boxes -> Fourier features -> an MLP to the adapter width."""

    freqs: torch.Tensor     # a buffer, registered in __init__

    def __init__(self, dim: int, num_freqs: int = 8, fourier: str = "user") -> None:
        super().__init__()
        self.fourier = fourier
        self.register_buffer("freqs", torch.linspace(0, 1, num_freqs))
        self.fourier_embedder = nn.Sequential(nn.Linear(4 * num_freqs * 2, dim // 2), nn.SiLU(),
                                              nn.Linear(dim // 2, dim))

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        omega = fourier_frequencies(self.freqs.float(), self.fourier)
        angles = boxes.float().unsqueeze(-1) * omega                    # (B, N, 4, F)
        # per coordinate: F sines then F cosines; the 4 coordinates' groups concatenated
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
        dtype = next(self.fourier_embedder.parameters()).dtype     # the first Linear's weight
        return self.fourier_embedder(features.to(dtype))


class SpatialAdapter(nn.Module):
    def __init__(self, dim: int, text_dim: int, heads: int = 8, num_freqs: int = 8,
                 null_slot: bool = False, box_mask: bool = False, fourier: str = "user",
                 text_proj: str = "user") -> None:
        super().__init__()
        self.box_mask = box_mask
        self.text_proj_rule = text_proj
        self.position_net = PositionNet(dim, num_freqs, fourier)
        self.text_proj = nn.Linear(text_dim, dim)
        self.gated_attn = GatedAttention(dim, heads, null_slot)

    def skips_text_proj(self, phrase_dim: int) -> bool:
        """The user's code: "text_proj is skipped when the phrase width already equals D"."""
        return self.text_proj_rule == "user" and phrase_dim == self.text_proj.out_features

    def context(self, grounding: "Grounding") -> torch.Tensor:
        """Box tokens: position features + projected phrases, zeroed where the mask is 0; no
        phrase vectors (the user's inference on a non-Kolors base): position features alone."""
        context = self.position_net(grounding.boxes)
        if grounding.phrases is not None:
            phrases = grounding.phrases.to(self.text_proj.weight.dtype)
            context = context + (phrases if self.skips_text_proj(phrases.shape[-1])
                                 else self.text_proj(phrases))
        return context * grounding.mask.to(context.dtype).unsqueeze(-1)

    def prepare(self, grounding: "Grounding") -> BoxKeys:
        """The grounding's box keys and values at this width: once per grounding, not per site."""
        return self.gated_attn.prepare(self.context(grounding), grounding.mask, grounding.scale)

    def delta(self, h: torch.Tensor, grounding: "Grounding",
              box: BoxKeys | None = None) -> torch.Tensor:
        """s * tanh(gate) * to_out(attention(h -> boxes)) in the adapter's dtype (float32, as the
        user's inference casts its adapter); the caller adds it to ``h`` in that dtype too.
        ``box``: ``prepare(grounding)`` computed earlier (the hooks share it between sites)."""
        return self.delta_with_probs(h, grounding, box)[0]

    def delta_with_probs(self, h: torch.Tensor, grounding: "Grounding",
                         box: BoxKeys | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``delta`` and its box attention (B, T, heads, slots), for the write diagnostics."""
        dtype = self.text_proj.weight.dtype
        region = (token_box_mask(grounding.boxes, h.shape[1], grounding.aspect)
                  if self.box_mask else None)
        return self.gated_attn.attend_with_probs(h.to(dtype), box or self.prepare(grounding),
                                                 region)

    def forward(self, h: torch.Tensor, grounding: "Grounding") -> torch.Tensor:
        """h + s * (out - h), summed in float32 and cast to h's dtype once, as the user's code."""
        return (h.to(self.text_proj.weight.dtype) + self.delta(h, grounding)).to(h.dtype)


USER_REFERENCE: dict[str, Any] = {"fourier": "user", "query": "attn2_output", "text_proj": "user",
                  "phrases": "kolors-only", "null_slot": False, "box_mask": False}
# What a gatebench checkpoint written before these keys existed meant by leaving them out.
_LEGACY_GATEBENCH = {"fourier": "nerf", "query": "stream", "text_proj": "always",
                     "phrases": "always", "null_slot": False, "box_mask": False}


def uses_phrases(config: Mapping[str, Any], base_kind: str) -> bool:
    """Whether this adapter gets phrase vectors on a base of this kind (config ``phrases``)."""
    return config.get("phrases", "always") == "always" or base_kind == "kolors"


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise CheckpointError(f"expected adapter_config {name} in {choices}, got {value!r}")
    return value


def adapter_config(widths: Sequence[int], text_dim: int, heads: int = 8, num_freqs: int = 8, *,
                   query: str, null_slot: bool, box_mask: bool, fourier: str, text_proj: str,
                   phrases: str) -> dict[str, Any]:
    """The recorded description of an adapter: shapes, every forward choice, its reference."""
    fourier = _FOURIER_ALIASES.get(fourier, fourier)
    _choice(query, QUERY_SOURCES, "query")
    _choice(fourier, FOURIER_KINDS, "fourier")
    _choice(text_proj, TEXT_PROJ_RULES, "text_proj")
    _choice(phrases, PHRASE_RULES, "phrases")
    config = {"family": "user", "widths": sorted({int(w) for w in widths}),
              "text_dim": int(text_dim), "heads": int(heads), "num_freqs": int(num_freqs),
              "fourier": fourier, "query": query, "text_proj": text_proj, "phrases": phrases,
              "null_slot": bool(null_slot), "box_mask": bool(box_mask), "compute_dtype": "float32"}
    variants = [k for k, v in USER_REFERENCE.items() if config[k] != v]
    config["reference"] = "user adapter module (formats.md)" + (
        f", variants: {', '.join(variants)}" if variants else "")
    return config


def resolve_config(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A config recorded in a gatebench checkpoint, completed: keys it lacks keep the meaning
    they had when gatebench wrote it (before they existed: ``_LEGACY_GATEBENCH``)."""
    get = lambda key: recorded.get(key, _LEGACY_GATEBENCH[key])  # noqa: E731
    return adapter_config(recorded["widths"], recorded["text_dim"], recorded.get("heads", 8),
                          recorded.get("num_freqs", 8), query=get("query"),
                          null_slot=bool(get("null_slot")), box_mask=bool(get("box_mask")),
                          fourier=get("fourier"), text_proj=get("text_proj"),
                          phrases=get("phrases"))


class AdapterSet(nn.ModuleDict):
    """``dim_{D}`` -> SpatialAdapter, exactly the user's ModuleDict layout (keys and shapes).

    The defaults are the user's reference forward (``USER_REFERENCE``); every departure is a
    named, recorded variant (module docstring). ``config`` is what results.json records.
    """

    def __init__(self, widths: list[int] | tuple[int, ...], text_dim: int, heads: int = 8,
                 num_freqs: int = 8, query: str = "attn2_output", null_slot: bool = False,
                 box_mask: bool = False, fourier: str = "user", text_proj: str = "user",
                 phrases: str = "kolors-only") -> None:
        self.config = adapter_config(widths, text_dim, heads, num_freqs, query=query,
                                     null_slot=null_slot, box_mask=box_mask, fourier=fourier,
                                     text_proj=text_proj, phrases=phrases)
        super().__init__({f"dim_{w}": SpatialAdapter(w, text_dim, heads, num_freqs, null_slot,
                                                     box_mask, self.config["fourier"], text_proj)
                          for w in self.config["widths"]})

    # The ModuleDict's views, typed: every value is a SpatialAdapter (the same objects).
    def __getitem__(self, key: str) -> SpatialAdapter:
        return cast(SpatialAdapter, super().__getitem__(key))

    def values(self) -> ValuesView[SpatialAdapter]:
        return cast(ValuesView[SpatialAdapter], super().values())

    def items(self) -> ItemsView[str, SpatialAdapter]:
        return cast(ItemsView[str, SpatialAdapter], super().items())

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "AdapterSet":
        c = resolve_config(config)
        return cls(c["widths"], c["text_dim"], c["heads"], c["num_freqs"], c["query"],
                   c["null_slot"], c["box_mask"], c["fourier"], c["text_proj"], c["phrases"])

    @classmethod
    def config_from_state(cls, state: Mapping[str, torch.Tensor]) -> dict:
        """A bare user state dict: shapes from its keys, forward = the user's reference."""
        widths, text_dim, freqs = [], None, None
        for key in state.keys():            # keys only: tensors of a lazy file stay unread
            name = key.removeprefix("module.")
            if name.endswith(".text_proj.weight") and name.startswith("dim_"):
                widths.append(int(name.split(".")[0][4:]))
                text_dim = int(state[key].shape[1])
            elif name.endswith("position_net.freqs"):
                freqs = state[key]
        if not widths or text_dim is None:
            raise CheckpointError("expected 'dim_{D}.text_proj.weight' keys to infer the adapter "
                                  f"shape, got {sorted(state)[:4]}")
        num_freqs = int(freqs.numel()) if freqs is not None else 8
        return adapter_config(widths, text_dim, 8, num_freqs, **USER_REFERENCE)

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
    phrases: torch.Tensor | None        # (B, N, text_dim); None: no phrase vectors
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
    """Holds the grounding of the UNet call in progress (hooks read ``self.grounding``) and the
    ``WriteMeter`` that records where the adapter writes, when one is set."""

    grounding: Grounding | None = None
    meter: WriteMeter | None = None

    @contextmanager
    def measuring(self, meter: WriteMeter | None) -> Iterator[None]:
        previous, self.meter = self.meter, meter
        try:
            yield
        finally:
            self.meter = previous

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
        self.query = adapters.config["query"]
        # BoxKeys per width for the grounding last set: every site and step of one width shares
        # them (the grounding is constant over a sampling run), recomputed when it changes
        self._boxes_for: Grounding | None = None
        self._boxes: dict[int, tuple[tuple, BoxKeys]] = {}
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
            self.handles.append(modules[name].register_forward_hook(
                self._hook(adapter, width, stream)))

    @contextmanager
    def grounded(self, grounding: Grounding | None) -> Iterator[None]:
        if grounding is not None and grounding is not self._boxes_for:
            self._boxes_for, self._boxes = grounding, {}
        with super().grounded(grounding):
            yield

    def _box_keys(self, adapter: SpatialAdapter, width: int, grounding: Grounding) -> BoxKeys:
        """The cached ``adapter.prepare(grounding)``, unless a tensor changed in place since (an
        optimizer step, an edited grounding) or autograd was switched on or off."""
        stamp = (torch.is_grad_enabled(), _versions(adapter.parameters()),
                 _versions(t for t in (grounding.boxes, grounding.phrases, grounding.mask,
                                       grounding.scale) if isinstance(t, torch.Tensor)))
        cached = self._boxes.get(width)
        if cached is None or cached[0] != stamp:
            cached = self._boxes[width] = (stamp, adapter.prepare(grounding))
        return cached[1]

    def _capture(self, stream: dict[str, torch.Tensor]):
        def hook(_module: nn.Module, inputs: tuple) -> None:
            if self.grounding is not None:
                stream["x"] = inputs[0]       # the residual stream entering the cross-attention
        return hook

    def _hook(self, adapter: SpatialAdapter, width: int, stream: dict[str, torch.Tensor]):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            grounding = self.grounding
            if grounding is None:
                return None
            x = output.float()
            h = stream.pop("x") + output if self.query == "stream" else x
            box = self._box_keys(adapter, width, grounding)
            meter = self.meter
            if meter is None:
                delta = adapter.delta(h, grounding, box)
            else:
                delta, probs = adapter.delta_with_probs(h, grounding, box)
                meter.record(delta, x, grounding, probs)
            # summed in float32, cast once (the user's h + s*(out - h) at the UNet's dtype)
            return (x + delta).to(output.dtype)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _versions(tensors: Iterator[torch.Tensor]) -> tuple[int, ...]:
    """In-place version counters (inference tensors keep none: they cannot change in place
    outside inference mode, so they count as unchanged)."""
    out = []
    for tensor in tensors:
        try:
            out.append(tensor._version)
        except RuntimeError:
            out.append(-1)
    return tuple(out)


def inject(unet: nn.Module, adapters: AdapterSet) -> Injection:
    return Injection(unet, adapters)

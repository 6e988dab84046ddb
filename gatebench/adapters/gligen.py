"""The diffusers GLIGEN fuser family: ``UNet2DConditionModel(attention_type="gated")``.

The checkpoint holds the fusers (``...fuser.alpha_attn`` etc.) and ``position_net``. We build a
gated copy of the base UNet, load the base weights plus the adapter's, and swap it in while the
adapter is attached. The reference is diffusers' ``StableDiffusionGLIGENPipeline`` (tested image
for image in tests/test_parity_pipelines.py), so we do what it does:

* objects padded to a fixed 30 slots: masked slots become the position net's learned null
  features and still take part in every fuser's self-attention;
* the unconditional CFG half gets null objects (mask 0) with the fusers ON
  (its family's reference_uncond rule);
* phrases: a layout's phrases tokenized together (padding to the longest, the attention mask
  passed) -> the CLIP text encoder's ``pooler_output``;
* scheduled sampling: fusers on for the first int(beta * steps) steps (generate.grounded_steps).

The gate scale s blends each fuser's residual, ``x + s * (fuser(x) - x)``: s = 1 is the pipeline.
``GLIGEN_FAMILY`` (end of file) is how gatebench.checkpoint recognises and reads these files.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from gatebench.adapters.family import AdapterFamily, all_zero, gate_value
from gatebench.adapters.types import CheckpointInfo, GateEntry
from gatebench.adapters.user import Grounded, Grounding
from gatebench.errors import CheckpointError

if TYPE_CHECKING:
    from gatebench.models.base import BaseModel

_GLIGEN_GATE = re.compile(r"^(?:module\.)?(.*\.)?(fuser)\.(alpha_attn|alpha_dense)$")

GLIGEN_SLOTS = 30           # the pipeline's max_objs
GLIGEN_CONFIG = {"family": "gligen", "reference": "diffusers StableDiffusionGLIGENPipeline",
                 "slots": GLIGEN_SLOTS, "phrases": "pooler_output, padding longest + mask"}


class GligenAdapterRuntime(Grounded):
    family = "gligen"
    phrase_key = "gligen-pooler"
    fixed_slots: int | None = GLIGEN_SLOTS     # as AdapterRuntime declares it

    def __init__(self, info: CheckpointInfo, state: dict[str, torch.Tensor], base: BaseModel) -> None:
        from diffusers import UNet2DConditionModel

        if base.kind not in ("sd", "pixel"):
            raise CheckpointError(f"expected an SD 1.x/2.x-style base for a GLIGEN fuser "
                                  f"checkpoint, got a {base.kind} base", path=info.path)
        self.info, self.base = info, base
        self._original = base.unet
        config = {k: v for k, v in base.unet.config.items() if not k.startswith("_")}
        gated = UNet2DConditionModel.from_config({**config, "attention_type": "gated"})
        merged = {**base.unet.state_dict(), **state}
        try:
            missing, unexpected = gated.load_state_dict(merged, strict=False)
        except RuntimeError as exc:    # size mismatches: widths of another base model
            first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line),
                         str(exc).splitlines()[0])
            raise CheckpointError(f"expected GLIGEN fuser weights that fit the base UNet, got "
                                  f"{first}", path=info.path,
                                  hint="this checkpoint was trained for a different base model") from None
        if missing or unexpected:
            raise CheckpointError(
                f"expected GLIGEN fuser weights that fit the base UNet, got {len(missing)} missing "
                f"(e.g. {missing[:2]}) and {len(unexpected)} unexpected keys (e.g. "
                f"{unexpected[:2]})", path=info.path,
                hint="this checkpoint was trained for a different base model")
        gated.to(base.device, base.dtype).eval().requires_grad_(False)
        self._hooks = base.unet._forward_pre_hooks.copy()   # e.g. CoordConv channels
        for hook in self._hooks.values():
            gated.register_forward_pre_hook(hook, with_kwargs=True)
        self.unet = gated
        self.grounding: Grounding | None = None
        self.handles: list[Any] = []
        self.attach()
        self.phrase_encoding = ("gligen: a layout's phrases tokenized together (padding to the "
                                "longest, truncation at the tokenizer's max length) -> text_encoder "
                                "with the attention mask -> pooler_output (as diffusers' GLIGEN "
                                "pipeline)")

    @torch.no_grad()
    def encode_phrases(self, phrases: list[str]) -> torch.Tensor:
        """One layout's phrases, as the pipeline encodes ``gligen_phrases`` (all of them, in one
        call; the pipeline has no rule for empty phrases, so neither do we)."""
        base = self.base
        tokens = base.tokenizer(list(phrases), padding=True, truncation=True,
                                max_length=base.tokenizer.model_max_length, return_tensors="pt")
        out = base.text_encoder(input_ids=tokens.input_ids.to(base.device),
                                attention_mask=tokens.attention_mask.to(base.device))
        return out.pooler_output.float().cpu()

    def _kwargs(self, _module, args: tuple, kwargs: dict):
        g = self.grounding
        if g is None:
            return None
        assert g.phrases is not None, "the sampler always gives GLIGEN its phrase vectors"
        gligen = {"boxes": g.boxes.to(self.base.dtype), "masks": g.mask.to(self.base.dtype),
                  "positive_embeddings": g.phrases.to(self.base.dtype)}
        extra = dict(kwargs.get("cross_attention_kwargs") or {})
        return args, {**kwargs, "cross_attention_kwargs": {**extra, "gligen": gligen}}

    def _blend(self, _module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        g = self.grounding
        if g is None:
            return None
        x = args[0]
        scale = g.scale.to(x.dtype).view(-1, 1, 1) if isinstance(g.scale, torch.Tensor) else g.scale
        delta = scale * (output - x)
        if self.meter is not None:    # the fuser self-attends: no box attention to read here
            self.meter.record(delta, x, g)
        return x + delta

    def attach(self) -> None:
        """Swap the gated UNet in and hook its fusers (nothing while attached); after ``remove``
        this re-attaches the same loaded copy (plan.LoadedAdapters: one load per checkpoint)."""
        if self.handles:
            return
        self._original = self.base.unet
        self.handles = [m.register_forward_hook(self._blend) for name, m in
                        self.unet.named_modules() if name.endswith(".fuser")]
        self.handles.append(self.unet.register_forward_pre_hook(self._kwargs, with_kwargs=True))
        self.base.unet = self.unet

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.base.unet = self._original


def recognise(keys: Sequence[str]) -> bool:
    """Any ``...fuser.alpha_attn`` / ``...fuser.alpha_dense`` key makes a file a GLIGEN one."""
    return any(_GLIGEN_GATE.match(key) for key in keys)


def read_gates(state: Mapping[str, Any], path: Path) -> tuple[GateEntry, ...]:
    """Two gates per fuser (attention and dense), in file order; the width is the fuser's."""
    gates: list[GateEntry] = []
    for key in state:
        match = _GLIGEN_GATE.match(key)
        if match:
            prefix = key[: -len(match.group(3))]
            kind = match.group(3)
            if kind == "alpha_attn":
                proj = [prefix + "attn.to_out.0.weight", prefix + "attn.to_out.0.bias",
                        prefix + "attn.to_out.weight", prefix + "attn.to_out.bias"]
                width_key = prefix + "attn.to_q.weight"
            else:
                proj = [prefix + "ff.net.2.weight", prefix + "ff.net.2.bias"]
                width_key = prefix + "ff.net.2.weight"
            width_tensor = state.get(width_key)
            width = (int(width_tensor.shape[0]) if isinstance(width_tensor, torch.Tensor)
                     and width_tensor.ndim >= 1 else None)
            layer = prefix.rstrip(".").removeprefix("module.")
            gates.append(GateEntry(key=key, layer=layer, kind=kind, width=width,
                                   raw=gate_value(state[key], key, path),
                                   out_proj_key=next((p for p in proj if p in state), None),
                                   out_proj_zero=all_zero(state, proj, path)))
    return tuple(gates)


def forward_config(header: Mapping[str, Any], state: Mapping[str, Any]) -> dict:
    """The pipeline's forward, with whatever a gatebench file recorded on top."""
    return {**GLIGEN_CONFIG, **dict(header.get("adapter_config") or {})}


def reference_uncond(info: CheckpointInfo) -> str:
    """diffusers' GLIGEN pipeline gives the unconditional half null objects."""
    return "null"


GLIGEN_FAMILY = AdapterFamily(name="gligen", example_key="...fuser.alpha_attn",
                              recognise=recognise, read_gates=read_gates,
                              forward_config=forward_config, reference_uncond=reference_uncond,
                              runtime=GligenAdapterRuntime)

"""`gatebench check-init`: is the adapter the identity at init, and do gradients reach it?

The user's history shows both matter: a random ``to_out`` with gate 3.0 garbled images from step 0
(not the identity), and gate 0 with ``to_out`` 0 never trained (no gradient: a deadlock).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gatebench.adapters.fit import load_state_checked
from gatebench.adapters.user import AdapterSet, Grounding, apply_init, inject
from gatebench.checkpoint import adapter_state
from gatebench.errors import CheckpointError, GatebenchError
from gatebench.readers.checkpoint_header import check_user_state

IDENTITY_TOL = 1e-6
ADAPTER_HEADS = 8


def check_shape(widths: tuple[int, ...], text_dim: int) -> None:
    """Widths and phrase width an adapter can be built with: positive, each width divisible by
    the adapter's heads (a width of 0 or 20 fails deep inside torch otherwise)."""
    if not widths:
        raise GatebenchError("--widths: expected at least one UNet width, got none",
                             hint="e.g. --widths 320,640,1280")
    for w in widths:
        if w < ADAPTER_HEADS or w % ADAPTER_HEADS:
            raise GatebenchError(f"--widths: expected positive widths divisible by the adapter's "
                                 f"{ADAPTER_HEADS} heads, got {w}", hint="e.g. --widths 32,64")
    if text_dim < 1:
        raise GatebenchError(f"--text-dim: expected a phrase width >= 1, got {text_dim}",
                             hint="e.g. --text-dim 768 (4096 for Kolors)")


@dataclass(frozen=True)
class InitCheck:
    scheme: str
    identity_max_abs_diff: float
    gate_grad_norm: float
    to_out_grad_norm: float

    @property
    def identity_ok(self) -> bool:
        return self.identity_max_abs_diff <= IDENTITY_TOL

    @property
    def gradient_ok(self) -> bool:
        return self.gate_grad_norm > 0.0 or self.to_out_grad_norm > 0.0

    @property
    def ok(self) -> bool:
        return self.identity_ok and self.gradient_ok

    def to_dict(self) -> dict[str, Any]:
        """`check-init --json`: the measurements and the three verdicts."""
        return {**dataclasses.asdict(self), "identity_ok": self.identity_ok,
                "gradient_ok": self.gradient_ok, "ok": self.ok}


def tiny_unet(widths: tuple[int, ...], cross_attention_dim: int, sample_size: int = 8):
    """A small UNet with cross-attention at every given width (one block per width)."""
    from diffusers import UNet2DConditionModel

    n = len(widths)
    heads = [max(1, w // 64) if w % 64 == 0 else 1 for w in widths]
    groups = min(32, min(widths) // 2)
    if any(w % groups for w in widths):      # e.g. 24,32: the largest group count dividing all
        common = math.gcd(*widths)
        groups = max(g for g in range(1, min(32, common) + 1) if common % g == 0)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(widths), down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n, cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(heads), norm_num_groups=groups)


@dataclass(frozen=True)
class UNetInputs:
    """One UNet call's inputs: random latents, a timestep, text states and extra kwargs."""

    sample: torch.Tensor
    timestep: torch.Tensor
    hidden: torch.Tensor
    kwargs: dict


def tiny_inputs(unet: torch.nn.Module, generator: torch.Generator) -> UNetInputs:
    config: Any = unet.config     # a diffusers UNet's config, registered at run time
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    return UNetInputs(torch.randn(2, config.in_channels, size, size, generator=generator),
                      torch.tensor([500, 500]),
                      torch.randn(2, 6, config.cross_attention_dim, generator=generator), {})


def base_inputs(base, generator: torch.Generator) -> UNetInputs:
    """Real text conditioning of a loaded base model (SDXL/Kolors need pooled embeds + time ids)."""
    height, width = base.default_size
    emb = base.encode_prompts(["a red circle", "a blue square"])
    shape = base.latent_shape(height, width)
    return UNetInputs(torch.randn(2, *shape, generator=generator).to(base.device, base.dtype),
                      torch.tensor([500, 500], device=base.device), emb.hidden,
                      base.unet_kwargs(emb, height, width))


def run_check(unet: torch.nn.Module, adapters: AdapterSet, scheme: str, inputs: UNetInputs, *,
              seed: int = 0, num_boxes: int = 3) -> InitCheck:
    """Compare UNet output with and without the adapter, then backprop through it once."""
    generator = torch.Generator().manual_seed(seed + 1)
    corners = torch.rand(2, num_boxes, 2, generator=generator) * 0.5
    boxes = torch.cat([corners, corners + 0.3 + 0.2 * torch.rand(2, num_boxes, 2, generator=generator)], -1)
    device = inputs.sample.device
    grounding = Grounding(boxes=boxes.clamp(0, 1).to(device),
                          phrases=torch.randn(2, num_boxes, adapters.config["text_dim"],
                                              generator=generator).to(device),
                          mask=torch.ones(2, num_boxes, device=device))
    unet.requires_grad_(False)
    adapters.to(device).requires_grad_(True)
    injection = inject(unet, adapters)
    call = lambda: unet(inputs.sample, inputs.timestep, encoder_hidden_states=inputs.hidden,  # noqa: E731
                        **inputs.kwargs).sample
    try:
        with torch.no_grad():
            base = call()
        with injection.grounded(grounding):
            adapted = call()
        target = torch.randn(adapted.shape, generator=generator).to(device)
        torch.nn.functional.mse_loss(adapted.float(), target).backward()
    finally:
        injection.remove()
    gate_grad = sum(float(a.gated_attn.gate.grad.norm()) for a in adapters.values()
                    if a.gated_attn.gate.grad is not None)
    out_grad = sum(float(a.gated_attn.to_out.weight.grad.norm()) for a in adapters.values()
                   if a.gated_attn.to_out.weight.grad is not None)
    return InitCheck(scheme, float((adapted.detach() - base).abs().max()), gate_grad, out_grad)


def check_init(*, schemes: tuple[str, ...], widths: tuple[int, ...] = (32, 64),
               text_dim: int = 32, base_model: Path | None = None,
               state_dict: dict[str, torch.Tensor] | None = None, seed: int = 0,
               checkpoint: Path | None = None) -> list[InitCheck]:
    """Run the check for each init scheme (or for the given adapter state, scheme 'checkpoint').

    With ``base_model`` the adapter is sized from that model (its UNet widths and phrase width)
    and fed its real prompt conditioning; otherwise a tiny UNet with ``widths`` is built (with
    ``state_dict`` and no base model: the checkpoint's own widths and phrase width).
    ``checkpoint`` alone: its adapter's weights are checked (`check-init --ckpt`); it also
    names the file in errors.
    """
    if state_dict is None and checkpoint is not None:
        state_dict = adapter_state(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    config = None
    if state_dict is not None:
        bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"expected '{bad[0]}' to be a tensor, got "
                                  f"{type(state_dict[bad[0]]).__name__}", path=checkpoint)
        check_user_state(state_dict, checkpoint)
        config = AdapterSet.config_from_state(state_dict)
        if base_model is None:    # the tiny UNet takes the checkpoint's own shape
            widths, text_dim = tuple(config["widths"]), int(config["text_dim"])
    check_shape(widths, text_dim)
    if base_model is not None:
        from gatebench.models import load_base_model
        base = load_base_model(base_model)
        unet, text_dim = base.unet, base.phrase_dim
        inputs = base_inputs(base, generator)
    else:
        unet = tiny_unet(widths, cross_attention_dim=text_dim)
        inputs = tiny_inputs(unet, generator)
    unet.eval()
    from gatebench.adapters.user import attn2_widths
    unet_widths = sorted(set(attn2_widths(unet).values()))
    results = []
    if state_dict is not None and config is not None:
        if int(config["text_dim"]) != int(text_dim):
            raise CheckpointError(f"expected the adapter's phrase width to equal the base "
                                  f"model's {text_dim}, got text_dim {config['text_dim']}",
                                  path=checkpoint, hint="this checkpoint was trained on a "
                                  "different base model")
        adapters = AdapterSet.from_config(config)
        load_state_checked(adapters, state_dict, checkpoint)
        results.append(run_check(unet, adapters, "checkpoint", inputs, seed=seed))
        return results
    for scheme in schemes:
        torch.manual_seed(seed)
        adapters = AdapterSet(unet_widths, text_dim)
        apply_init(adapters, scheme)
        results.append(run_check(unet, adapters, scheme, inputs, seed=seed))
    return results

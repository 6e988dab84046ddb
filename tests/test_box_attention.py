"""The reassociated box attention (adapters/box_attention.py) equals its textbook form.

The textbook form (bench/reference_attention.py) projects every image token through ``to_q`` and
``to_out``; gatebench folds those projections into the box keys and values. Same function, so
outputs AND gradients must agree to float32 rounding, for every mask pattern and variant.
"""
from __future__ import annotations

import pytest
import torch

from bench.reference_attention import OpCounter, textbook_gated_attention
from gatebench.adapters.box_attention import GatedAttention, token_box_mask
from gatebench.adapters.user import (
    AdapterSet,
    Grounding,
    SpatialAdapter,
    apply_init,
    attn2_widths,
    inject,
)
from gatebench.check_init import tiny_unet

# layouts with 3, 2 (one padded slot), 1 and 0 boxes, padded to 3 slots
BOXES = torch.tensor([[[0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.7], [0.2, 0.6, 0.7, 0.95]],
                      [[0.05, 0.3, 0.45, 0.9], [0.55, 0.1, 0.95, 0.5], [0, 0, 0, 0]],
                      [[0.3, 0.3, 0.8, 0.8], [0, 0, 0, 0], [0, 0, 0, 0]],
                      [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32)


def _module(dim: int, heads: int, null_slot: bool, seed: int = 0) -> GatedAttention:
    torch.manual_seed(seed)
    module = GatedAttention(dim, heads, null_slot)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)       # random to_out and gate: a real effect
    return module


def _inputs(dim: int, length: int = 64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(4, length, dim, generator=g)
    context = torch.randn(4, 3, dim, generator=g) * MASK[..., None]
    scale = torch.tensor([1.0, 0.5, 2.0, 0.0])
    return h, context, scale


@pytest.mark.parametrize("dim,heads", [(64, 8), (640, 8), (48, 4)])
@pytest.mark.parametrize("null_slot,region", [(False, False), (True, False), (True, True),
                                              (False, True)])
def test_equals_the_textbook_form(dim: int, heads: int, null_slot: bool, region: bool) -> None:
    module = _module(dim, heads, null_slot)
    h, context, scale = _inputs(dim)
    where = token_box_mask(BOXES, h.shape[1]) if region else None
    with torch.no_grad():
        ours = module.attend(h, module.prepare(context, MASK, scale), where)
        reference = textbook_gated_attention(module, h, context, MASK, where, scale)
    assert torch.isfinite(ours).all()
    for row in range(3):                              # row 3 has scale 0: exactly nothing
        effect = reference[row].abs().max()
        assert effect > 1e-3
        assert (ours[row] - reference[row]).abs().max() <= 1e-5 * effect, row
    assert not ours[3].any()
    # a number as the scale, and forward() = attend(prepare()) unscaled
    with torch.no_grad():
        torch.testing.assert_close(module(h, context, MASK, where),
                                   textbook_gated_attention(module, h, context, MASK, where),
                                   rtol=1e-5, atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("null_slot", [False, True])
def test_gradients_equal_the_textbook_form(null_slot: bool) -> None:
    """The trainer uses the same forward: its gradients (parameters, image tokens, boxes) must
    be the textbook form's to float32 rounding."""
    dim = 64
    ours_module, ref_module = _module(dim, 8, null_slot), _module(dim, 8, null_slot)
    h, context, scale = _inputs(dim)
    weight = torch.randn(4, 64, dim, generator=torch.Generator().manual_seed(2))
    grads = []
    for module, fn in ((ours_module, lambda m, *a: m.attend(a[0], m.prepare(a[1], MASK, scale))),
                       (ref_module, lambda m, *a: textbook_gated_attention(m, a[0], a[1], MASK,
                                                                            scale=scale))):
        x, c = h.clone().requires_grad_(True), context.clone().requires_grad_(True)
        (fn(module, x, c) * weight).sum().backward()
        grads.append({"h": x.grad, "context": c.grad,
                      **{n: p.grad for n, p in module.named_parameters()}})
    ours, reference = grads
    for name in reference:
        scale_of = reference[name].abs().max()
        assert scale_of > 0, name
        assert (ours[name] - reference[name]).abs().max() <= 1e-5 * scale_of, name


def test_no_valid_box_is_finite_in_half_precision() -> None:
    """All-masked rows get a finite floor, not -inf: no NaN under autocast (the trainer's)."""
    module = _module(64, 8, False)
    h, context, _ = _inputs(64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.attend(h, module.prepare(context, MASK))
    assert torch.isfinite(out).all()
    bias = torch.tanh(module.gate) * module.to_out.bias
    torch.testing.assert_close(out[3].float(), bias.detach().expand(64, -1), rtol=2e-2, atol=2e-2)


def test_hooks_prepare_once_per_width_and_refresh_after_an_update(monkeypatch) -> None:
    """Every site and step of one width shares the grounding's box keys; an in-place parameter
    update (an optimizer step under the same grounding) recomputes them."""
    torch.manual_seed(0)
    unet = tiny_unet((32, 64), cross_attention_dim=16).eval()
    adapters = AdapterSet((32, 64), 32)
    apply_init(adapters, "gligen", gate_value=0.8)
    calls: list[int] = []
    original = SpatialAdapter.prepare
    monkeypatch.setattr(SpatialAdapter, "prepare",
                        lambda self, g: calls.append(1) or original(self, g))
    g = torch.Generator().manual_seed(3)
    inputs = {"sample": torch.randn(4, 4, 8, 8, generator=g), "timestep": torch.tensor(500),
              "encoder_hidden_states": torch.randn(4, 7, 16, generator=g)}
    grounding = Grounding(BOXES, torch.randn(4, 3, 32, generator=g), MASK, 1.0)
    injection = inject(unet, adapters)
    try:
        with torch.no_grad():
            for _ in range(3):                      # three denoising steps, one grounding
                with injection.grounded(grounding):
                    first = unet(**inputs).sample
            assert len(calls) == 2                  # widths 32 and 64, once each
            for adapter in adapters.values():
                adapter.gated_attn.to_out.weight.add_(0.5)
            with injection.grounded(grounding):
                updated = unet(**inputs).sample
    finally:
        injection.remove()
    assert len(calls) == 4 and (updated - first).abs().max() > 1e-4
    fresh = inject(unet, adapters)
    try:
        with torch.no_grad(), fresh.grounded(grounding):
            torch.testing.assert_close(unet(**inputs).sample, updated)
    finally:
        fresh.remove()


def test_a_grounded_site_is_a_few_operators_and_never_syncs() -> None:
    """At one image per call the GPU is launch-bound: with the box keys shared, a site adds a
    handful of operators (cast, two batched products, a softmax, the sum, the cast back) and no
    host sync (``.item()``, ``.any()`` in Python: ``_local_scalar_dense``)."""
    torch.manual_seed(0)
    unet = tiny_unet((32, 64), cross_attention_dim=16).eval()
    adapters = AdapterSet((32, 64), 32)
    apply_init(adapters, "gligen", gate_value=0.5)
    grounding = Grounding(torch.rand(2, 3, 4), torch.randn(2, 3, 32), torch.ones(2, 3),
                          torch.tensor([1.0, 0.5]))
    call = lambda: unet(torch.randn(2, 4, 8, 8), torch.tensor(500),  # noqa: E731
                        encoder_hidden_states=torch.randn(2, 7, 16))
    injection = inject(unet, adapters)
    try:
        with torch.no_grad():
            with OpCounter() as base:
                call()
            with injection.grounded(grounding):
                call()                                  # the first call prepares the box keys
            with OpCounter() as grounded, injection.grounded(grounding):
                call()
    finally:
        injection.remove()
    sites = len(attn2_widths(unet))
    assert "_local_scalar_dense" not in grounded.ops
    assert 0 < len(grounded.ops) - len(base.ops) <= 10 * sites

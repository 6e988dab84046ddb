"""The write diagnostics on adapters built so their answers are known (issue 20, part 6)."""
from __future__ import annotations

import pytest
import torch

from gatebench.adapters.box_attention import token_box_mask
from gatebench.adapters.user import AdapterSet, Grounding, apply_init, inject
from gatebench.adapters.write_meter import NO_BOX, ONE_BOX, ZERO_EFFECT, WriteMeter
from gatebench.check_init import tiny_unet

TWO = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])   # disjoint quarters


def _adapter(dim: int = 32, **variant):
    torch.manual_seed(0)
    adapters = AdapterSet([dim], 16, heads=4, **variant)
    apply_init(adapters, "gligen", gate_value=1.0)
    with torch.no_grad():
        for p in adapters.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return adapters[f"dim_{dim}"]


def _measure(adapter, grounding: Grounding, lengths=(64, 16)) -> dict:
    meter = WriteMeter(grounding.boxes.shape[0], grounding.boxes.shape[1], "cpu")
    g = torch.Generator().manual_seed(1)
    for length in lengths:                          # two sites of different grids
        h = torch.randn(grounding.boxes.shape[0], length, 32, generator=g)
        delta, probs = adapter.delta_with_probs(h, grounding)
        meter.record(delta, h, grounding, probs)
    return meter.results(range(grounding.boxes.shape[0]), grounding.mask)[0]


def test_region_attention_without_bias_writes_only_in_the_boxes() -> None:
    """box_mask + null slot + zero to_out bias: tokens outside every box get exactly 0, so all
    energy is in the boxes, lift = 1 / union share, and each box hears only its own tokens."""
    adapter = _adapter(box_mask=True, null_slot=True)
    with torch.no_grad():
        adapter.gated_attn.to_out.bias.zero_()
    grounding = Grounding(TWO, torch.randn(1, 2, 16), torch.ones(1, 2))
    row = _measure(adapter, grounding)
    share = float(token_box_mask(TWO, 64).any(-1).float().mean())   # 0.5 on both grids
    assert row["effect_in_boxes"] == pytest.approx(1.0)
    assert row["effect_lift"] == pytest.approx(1.0 / share)
    assert row["box_attention_kappa"] == pytest.approx(1.0) and row["n_kappa_boxes"] == 2
    assert 0 < row["effect_norm"] < 10


def test_uniform_attention_scores_chance() -> None:
    """to_q = 0: every token attends uniformly to the boxes and receives the same residual, so
    the write is uniform (lift 1, in-box share = union share) and kappa is 0."""
    adapter = _adapter()
    with torch.no_grad():
        adapter.gated_attn.to_q.weight.zero_()
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 0.75]]])
    row = _measure(adapter, Grounding(boxes, torch.randn(1, 2, 16), torch.ones(1, 2)))
    assert row["effect_lift"] == pytest.approx(1.0, abs=1e-6)
    assert row["box_attention_kappa"] == pytest.approx(0.0, abs=1e-6)


def test_not_computed_is_said_not_faked() -> None:
    adapter = _adapter()
    one = _measure(adapter, Grounding(TWO[:, :1], torch.randn(1, 1, 16), torch.ones(1, 1)))
    assert one["box_attention_kappa"] is None and one["box_attention_kappa_reason"] == ONE_BOX
    assert one["effect_lift"] is not None
    none = _measure(adapter, Grounding(TWO, torch.randn(1, 2, 16), torch.zeros(1, 2)))
    assert none["effect_lift"] is None and none["effect_lift_reason"] == NO_BOX
    assert none["effect_norm"] > 0                         # the bias still writes
    apply_init(adapter_set := AdapterSet([32], 16, heads=4), "deadlock")
    dead = _measure(adapter_set["dim_32"], Grounding(TWO, torch.randn(1, 2, 16), torch.ones(1, 2)))
    assert dead["effect_norm"] == 0.0 and dead["effect_in_boxes"] is None
    assert dead["effect_in_boxes_reason"] == ZERO_EFFECT


def test_measured_through_the_hooks_without_changing_the_output() -> None:
    """The meter rides on the injection's own forward: same UNet output, sums from every site."""
    torch.manual_seed(0)
    unet = tiny_unet((32, 64), cross_attention_dim=16).eval()
    adapters = AdapterSet((32, 64), 32)
    apply_init(adapters, "gligen", gate_value=0.8)
    with torch.no_grad():
        for p in adapters.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    grounding = Grounding(TWO.expand(2, -1, -1), torch.randn(2, 2, 32), torch.ones(2, 2),
                          torch.tensor([1.0, 2.0]))
    inputs = {"sample": torch.randn(2, 4, 8, 8), "timestep": torch.tensor(500),
              "encoder_hidden_states": torch.randn(2, 7, 16)}
    meter = WriteMeter(2, 2, "cpu")
    injection = inject(unet, adapters)
    try:
        with torch.no_grad(), injection.grounded(grounding):
            plain = unet(**inputs).sample
            with injection.measuring(meter):
                measured = unet(**inputs).sample
    finally:
        injection.remove()
    torch.testing.assert_close(measured, plain, rtol=0, atol=0)
    rows = meter.results([0, 1], grounding.mask)
    assert all(r["effect_in_boxes"] is not None and r["box_attention_kappa"] is not None
               for r in rows)
    assert rows[1]["effect_norm"] > rows[0]["effect_norm"]   # gate scale 2 writes harder
    maps = meter.maps([0, 1])
    assert maps.shape == (2, 32, 32) and float(maps.max()) == pytest.approx(1.0)


def test_measuring_adds_a_few_operators_per_site_and_never_syncs() -> None:
    """The diagnostics ride along at every site and step: in-place sums, no host sync."""
    from bench.reference_attention import OpCounter
    from gatebench.adapters.user import attn2_widths

    torch.manual_seed(0)
    unet = tiny_unet((32, 64), cross_attention_dim=16).eval()
    adapters = AdapterSet((32, 64), 32)
    apply_init(adapters, "gligen", gate_value=0.5)
    grounding = Grounding(TWO.expand(2, -1, -1), torch.randn(2, 2, 32), torch.ones(2, 2))
    call = lambda: unet(torch.randn(2, 4, 8, 8), torch.tensor(500),  # noqa: E731
                        encoder_hidden_states=torch.randn(2, 7, 16))
    meter = WriteMeter(2, 2, "cpu")
    injection = inject(unet, adapters)
    try:
        with torch.no_grad(), injection.grounded(grounding):
            call()
            with injection.measuring(meter):
                call()                                   # the first call makes the sums
                with OpCounter() as measured:
                    call()
            with OpCounter() as plain:
                call()
    finally:
        injection.remove()
    assert "_local_scalar_dense" not in measured.ops
    assert 0 < len(measured.ops) - len(plain.ops) <= 12 * len(attn2_widths(unet))

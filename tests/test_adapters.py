"""The user adapter family's forward: identity at gate 0, both query sources, key layout."""
from __future__ import annotations

import pytest
import torch

from gatebench.adapters.user import AdapterSet, Grounding, apply_init, inject
from gatebench.check_init import tiny_inputs, tiny_unet


def run(unet, adapters, inputs, grounding):
    injection = inject(unet, adapters)
    try:
        with injection.grounded(grounding):
            return unet(inputs.sample, inputs.timestep, encoder_hidden_states=inputs.hidden).sample
    finally:
        injection.remove()


@pytest.mark.parametrize("query", ["stream", "attn2_output"])
def test_identity_at_gate_zero_and_effect_when_open(query: str) -> None:
    torch.manual_seed(0)
    unet = tiny_unet((32, 64), cross_attention_dim=16).eval()
    inputs = tiny_inputs(unet, torch.Generator().manual_seed(0))
    adapters = AdapterSet([32, 64], 16, query=query)
    apply_init(adapters, "gligen")
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.5]], [[0.4, 0.4, 0.9, 0.9]]])
    grounding = Grounding(boxes, torch.randn(2, 1, 16), torch.ones(2, 1))
    with torch.no_grad():
        plain = unet(inputs.sample, inputs.timestep, encoder_hidden_states=inputs.hidden).sample
        assert torch.equal(run(unet, adapters, inputs, grounding), plain)
        for adapter in adapters.values():
            adapter.gated_attn.gate.fill_(0.5)
        opened = run(unet, adapters, inputs, grounding)
        half = run(unet, adapters, inputs, Grounding(boxes, grounding.phrases, grounding.mask, 0.0))
    assert (opened - plain).abs().max() > 1e-4
    assert torch.equal(half, plain)                      # gate scale 0 is exactly the base
    assert adapters.config["query"] == query
    assert set(AdapterSet.from_config(adapters.config).state_dict()) == set(adapters.state_dict())


def test_query_sources_differ() -> None:
    torch.manual_seed(0)
    unet = tiny_unet((32, 64), cross_attention_dim=16).eval()
    inputs = tiny_inputs(unet, torch.Generator().manual_seed(0))
    # two boxes: with a single key, attention ignores the query altogether
    grounding = Grounding(torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]]] * 2),
                          torch.randn(2, 2, 16), torch.ones(2, 2))
    outs = []
    for query in ("stream", "attn2_output"):
        torch.manual_seed(1)
        adapters = AdapterSet([32, 64], 16, query=query)
        apply_init(adapters, "legacy")
        with torch.no_grad():
            outs.append(run(unet, adapters, inputs, grounding))
    assert (outs[0] - outs[1]).abs().max() > 1e-4


def test_user_key_layout() -> None:
    keys = set(AdapterSet([640], 4096).state_dict())
    assert {"dim_640.position_net.freqs", "dim_640.position_net.fourier_embedder.0.weight",
            "dim_640.position_net.fourier_embedder.2.weight", "dim_640.text_proj.weight",
            "dim_640.gated_attn.to_q.weight", "dim_640.gated_attn.to_out.bias",
            "dim_640.gated_attn.gate"} <= keys
    shapes = {k: tuple(v.shape) for k, v in AdapterSet([640], 4096).state_dict().items()}
    assert shapes["dim_640.position_net.fourier_embedder.0.weight"] == (320, 64)
    assert shapes["dim_640.text_proj.weight"] == (640, 4096)
    assert "dim_640.gated_attn.to_q.bias" not in keys


def test_null_slot_lets_a_single_box_be_localised() -> None:
    """Without a null slot, one box gives every token the same value; with it, tokens differ."""
    from gatebench.adapters.box_attention import GatedAttention

    torch.manual_seed(0)
    h = torch.randn(1, 16, 32)
    context = torch.randn(1, 1, 32)
    mask = torch.ones(1, 1)
    plain = GatedAttention(32, 4)
    with torch.no_grad():
        plain.gate.fill_(1.0)
        out = plain(h, context, mask)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)   # identical for all tokens
    null = GatedAttention(32, 4, null_slot=True)
    null.load_state_dict(plain.state_dict())
    with torch.no_grad():
        out = null(h, context, mask)
        empty = null(h, context, torch.zeros(1, 1))
    assert (out - out[:, :1]).abs().max() > 1e-3
    assert not empty.any() or torch.allclose(empty, null.to_out.bias * torch.tanh(null.gate))


def test_token_box_mask_marks_cells_inside_each_box() -> None:
    from gatebench.adapters.box_attention import token_box_mask

    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.62, 0.62]]])
    region = token_box_mask(boxes, 64)
    assert region.shape == (1, 64, 2)
    assert region[0, :, 0].view(8, 8)[:4, :4].all() and region[0, :, 0].sum() == 16
    # a box smaller than a cell still owns the cell holding its centre (row 4, col 4)
    assert region[0, :, 1].nonzero().flatten().tolist() == [4 * 8 + 4]
    tall = token_box_mask(torch.tensor([[[0.0, 0.0, 0.5, 1.0]]]), 32, aspect=2.0)  # 8 rows x 4 cols
    assert tall[0, :, 0].view(8, 4)[:, :2].all() and tall[0, :, 0].sum() == 16
    from gatebench.errors import ProtocolError

    with pytest.raises(ProtocolError, match="grid"):
        token_box_mask(boxes, 60, aspect=1.0)


def test_box_mask_leaves_tokens_outside_every_box_untouched() -> None:
    """Region attention: tokens outside all boxes attend only to the null slot, so get 0."""
    torch.manual_seed(0)
    adapters = AdapterSet([32], 16, heads=4, null_slot=True, box_mask=True)
    apply_init(adapters, "gligen", gate_value=1.0)
    with torch.no_grad():
        adapters["dim_32"].gated_attn.to_out.bias.zero_()
    grounding = Grounding(torch.tensor([[[0.0, 0.0, 0.5, 0.5]]]), torch.randn(1, 1, 16), torch.ones(1, 1))
    h = torch.randn(1, 64, 32)
    delta = adapters["dim_32"].delta(h, grounding).view(8, 8, 32)
    assert delta[:4, :4].abs().amax() > 1e-3
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:4, :4] = False
    assert delta[outside].abs().max() == 0
    assert AdapterSet.from_config(adapters.config).config["box_mask"] is True

"""The diffusers GLIGEN fuser family: a fuser checkpoint made in the test loads and generates."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gatebench.checkpoint import inspect_checkpoint, load_adapter
from gatebench.errors import CheckpointError
from gatebench.generate import ImageJob, Sampler, SamplerSettings, layout_seed
from gatebench.layouts import Layout, LayoutObject
from gatebench.models import load_base_model
from tests.model_builders import make_tiny_sd, make_tiny_sdxl


def gligen_checkpoint(base_dir: Path, out: Path, alpha: float = 1.0) -> Path:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base_dir / "unet")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    torch.manual_seed(0)
    gated = UNet2DConditionModel.from_config({**config, "attention_type": "gated"})
    state = {k: v for k, v in gated.state_dict().items() if ".fuser." in k or k.startswith("position_net.")}
    for key in state:
        if key.endswith(("alpha_attn", "alpha_dense")):
            state[key] = torch.tensor(alpha)
    torch.save(state, out)
    return out


LAYOUTS = [Layout("a", "a red square", (LayoutObject("red square", (0.1, 0.1, 0.6, 0.6)),)),
           Layout("b", "two squares", (LayoutObject("red square", (0.1, 0.1, 0.4, 0.4)),
                                       LayoutObject("blue square", (0.5, 0.5, 0.9, 0.9))))]


def test_gligen_checkpoint_generates_and_scale_zero_is_the_base(tmp_path: Path) -> None:
    folder = make_tiny_sd(tmp_path)
    ckpt = gligen_checkpoint(folder, tmp_path / "gligen.pt")
    info = inspect_checkpoint(ckpt)
    assert info.family == "gligen"
    base = load_base_model(folder)
    original = base.unet
    sampler = Sampler(base, SamplerSettings(2, 2.0, "DDIMScheduler", 1.0, "drop", 16, 16))
    jobs = lambda s: [ImageJob(lay, s, layout_seed(1, lay.layout_id), Path("-")) for lay in LAYOUTS]  # noqa: E731
    plain, _ = sampler.sample(jobs(0.0), None)
    adapter = load_adapter(ckpt, base, info)
    try:
        assert base.unet is not original
        zero, _ = sampler.sample(jobs(0.0), adapter)
        diagnostics: list = []
        one, _ = sampler.sample(jobs(1.0), adapter, diagnostics=diagnostics)
    finally:
        adapter.remove()
    # where the fusers write: their residual is measured; they expose no box attention
    assert len(diagnostics) == 2
    for record, density in diagnostics:
        assert record["effect_norm"] > 0 and 0 <= record["effect_in_boxes"] <= 1
        assert record["box_attention_kappa"] is None
        assert "no box attention" in record["box_attention_kappa_reason"]
        assert density.shape == (32, 32) and float(density.max()) == 1.0
    assert base.unet is original
    assert torch.allclose(zero, plain, atol=1e-6)
    assert (one - plain).abs().max() > 1e-4
    assert "pooler_output" in adapter.phrase_encoding


def test_gligen_checkpoint_for_another_base_is_refused(tmp_path: Path) -> None:
    ckpt = gligen_checkpoint(make_tiny_sd(tmp_path), tmp_path / "gligen.pt")
    other = load_base_model(make_tiny_sdxl(tmp_path))
    with pytest.raises(CheckpointError, match="SD 1.x/2.x-style base"):
        load_adapter(ckpt, other)
    # a fuser file whose widths do not fit the UNet names the mismatch
    state = torch.load(ckpt, weights_only=True)
    state = {k: (v[:8] if v.ndim and v.shape[0] == 32 else v) for k, v in state.items()}
    torch.save(state, tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match="fit the base UNet|size"):
        load_adapter(tmp_path / "narrow.pt", load_base_model(make_tiny_sd(tmp_path)))

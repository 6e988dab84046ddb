"""The shapes world's base-model format: word-level bilingual tokenizer and CoordConv channels."""
from __future__ import annotations

from pathlib import Path

import torch

from gatebench.models import load_base_model
from gatebench.models.base import coord_grid


def test_world_base_folder_round_trip(tmp_path: Path) -> None:
    from diffusers import DDIMScheduler

    from gatebench.train.world.base import build_models, save_folder, world_tokenizer_fast

    tokenizer = world_tokenizer_fast(tmp_path / "tok")
    unet, text = build_models(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                              tokenizer.bos_token_id)
    folder = save_folder(tmp_path / "model", unet, text, tmp_path / "tok", DDIMScheduler())
    base = load_base_model(folder)
    assert base.kind == "pixel" and base.coord_channels and base.latent_shape(32, 32) == (3, 32, 32)
    zh = base.tokenizer("一个红色圆形和一个蓝色正方形").input_ids
    words = base.tokenizer.convert_ids_to_tokens(zh)
    assert words[1:-1] == ["一个", "红色", "圆形", "和", "一个", "蓝色", "正方形"]
    assert "<unk>" not in " ".join(base.tokenizer.convert_ids_to_tokens(
        base.tokenizer("a red circle and a blue square").input_ids))
    x = torch.randn(2, 3, 32, 32)
    hidden = base.encode_prompts(["一个红色圆形", "a red circle"]).hidden
    out = base.unet(x, torch.tensor([10, 10]), encoder_hidden_states=hidden).sample
    assert out.shape == (2, 3, 32, 32)
    grid = coord_grid(1, 4, 4, "cpu", torch.float32)
    assert grid[0, 0, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]      # x varies along width
    assert grid[0, 1, :, 0].tolist() == [-0.75, -0.25, 0.25, 0.75]   # y varies along height

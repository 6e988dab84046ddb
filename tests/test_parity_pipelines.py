"""Parity against diffusers' own pipelines, same latents: base models at gate scale 0, the GLIGEN
family against StableDiffusionGLIGENPipeline, the user family end to end against a KolorsPipeline
driven by the user's processors (restated in reference_user.py), and batch independence.

Each pipeline is loaded with ``from_pretrained`` from the same local folder, as a user would.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from gatebench.checkpoint import inspect_checkpoint, load_adapter
from gatebench.generate import ImageJob, Sampler, SamplerSettings, layout_seed
from gatebench.layouts import Layout, LayoutObject
from gatebench.models import load_base_model
from gatebench.protocol import load_protocol
from tests import model_builders
from tests.reference_user import install, phrase_vectors, random_user_state

SIZE = 16
ONE = Layout("one", "a red circle", (LayoutObject("red circle", (0.1, 0.2, 0.6, 0.7)),))
TWO = Layout("two", "a red circle and a blue square",
             (LayoutObject("red circle", (0.05, 0.1, 0.45, 0.5)),
              LayoutObject("blue square", (0.5, 0.4, 0.95, 0.9))))
FIVE = Layout("five", "many things", tuple(
    LayoutObject(name, (0.1 * i, 0.05 + 0.1 * i, 0.4 + 0.1 * i, 0.5 + 0.08 * i))
    for i, name in enumerate(["red circle", "blue square", "green square", "yellow circle",
                              "the big blue triangle"])))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    return {"sd": model_builders.make_tiny_sd(root), "sdxl": model_builders.make_tiny_sdxl(root),
            "kolors": model_builders.make_tiny_kolors(root)}


def _pipeline(cls_name: str, folder: Path, **components):
    import diffusers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = getattr(diffusers, cls_name)
        extra = {"safety_checker": None, "feature_extractor": None,
                 "requires_safety_checker": False} if "StableDiffusion" in cls_name and \
            "XL" not in cls_name else {}
        pipe = cls.from_pretrained(folder, **extra, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _noise(base, layout: Layout, seed: int = 7) -> torch.Tensor:
    shape = base.latent_shape(SIZE, SIZE)
    return torch.randn(shape, generator=torch.Generator().manual_seed(layout_seed(seed,
                                                                                layout.layout_id)))


def _ours(base, layouts, adapter, scale: float, *, steps: int, guidance: float, scheduler: str,
          fraction: float = 1.0, uncond: str = "reference") -> torch.Tensor:
    settings = SamplerSettings(steps, guidance, scheduler, fraction, uncond, SIZE, SIZE)
    jobs = [ImageJob(lay, scale, layout_seed(7, lay.layout_id), Path("-")) for lay in layouts]
    images, finite = Sampler(base, settings).sample(jobs, adapter)
    assert bool(finite.all())
    return images


@pytest.mark.parametrize("kind, pipeline", [("sd", "StableDiffusionPipeline"),
                                            ("sdxl", "StableDiffusionXLPipeline"),
                                            ("kolors", "KolorsPipeline")])
def test_scale_zero_is_the_base_pipeline(folders, kind: str, pipeline: str) -> None:
    base = load_base_model(folders[kind])
    pipe = _pipeline(pipeline, folders[kind], scheduler=base.make_scheduler("DDIMScheduler"))
    with torch.no_grad():
        theirs = pipe(ONE.caption, height=SIZE, width=SIZE, num_inference_steps=3,
                      guidance_scale=4.0, latents=_noise(base, ONE)[None], output_type="pt").images
    ours = _ours(base, [ONE], None, 0.0, steps=3, guidance=4.0, scheduler="DDIMScheduler")
    assert (ours - theirs).abs().max() <= 1e-4


def _gligen_checkpoint(folder: Path, out: Path) -> tuple[Path, object]:
    """Fusers with random weights and open gates, saved as a bare fuser state dict."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    torch.manual_seed(3)
    gated = UNet2DConditionModel.from_config({**config, "attention_type": "gated"})
    gated.load_state_dict(unet.state_dict(), strict=False)
    with torch.no_grad():
        for name, param in gated.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                param.fill_(0.8)
    state = {k: v for k, v in gated.state_dict().items()
             if ".fuser." in k or k.startswith("position_net.")}
    torch.save(state, out)
    return out, gated.eval()


def test_gligen_family_is_the_gligen_pipeline(folders, tmp_path: Path) -> None:
    ckpt, gated = _gligen_checkpoint(folders["sd"], tmp_path / "gligen.pt")
    base = load_base_model(folders["sd"])
    pipe = _pipeline("StableDiffusionGLIGENPipeline", folders["sd"], unet=gated,
                     scheduler=base.make_scheduler("DDIMScheduler"))
    steps, beta = 5, 0.3                      # int(1.5) = 1 grounded step (ceil would be 2)
    adapter = load_adapter(ckpt, base, inspect_checkpoint(ckpt))
    try:
        ours = _ours(base, [TWO, ONE], adapter, 1.0, steps=steps, guidance=3.0,
                     scheduler="DDIMScheduler", fraction=beta)
        off = _ours(base, [TWO], adapter, 0.0, steps=steps, guidance=3.0,
                    scheduler="DDIMScheduler", fraction=beta)
    finally:
        adapter.remove()
    for row, layout in enumerate([TWO, ONE]):
        with torch.no_grad():
            theirs = pipe(layout.caption, height=SIZE, width=SIZE, num_inference_steps=steps,
                          guidance_scale=3.0, latents=_noise(base, layout)[None],
                          gligen_phrases=[o.name for o in layout.objects],
                          gligen_boxes=[list(o.bbox) for o in layout.objects],
                          gligen_scheduled_sampling_beta=beta, output_type="pt").images
        assert (ours[row] - theirs[0]).abs().max() <= 1e-4, layout.layout_id
    assert (ours[0] - off[0]).abs().max() > 1e-3          # the adapter's effect is not nothing


def _user_checkpoint(base, out: Path) -> Path:
    from gatebench.adapters.user import attn2_widths

    widths = tuple(sorted(set(attn2_widths(base.unet).values())))
    torch.save(random_user_state(widths, base.phrase_dim, seed=5, gate=0.9), out)
    return out


ZERO = Layout("zero", "an empty meadow", ())


@pytest.mark.parametrize("kind, pipeline", [("kolors", "KolorsPipeline"),
                                            ("sd", "StableDiffusionPipeline")])
def test_user_family_end_to_end_is_the_users_inference(folders, tmp_path: Path, kind: str,
                                                       pipeline: str) -> None:
    """The pipeline + the user's processors at every attn2 (one layout per call, its boxes in
    both CFG halves; phrase vectors on Kolors only, as the user's inference) vs gatebench's
    sampler with the oracle-coco2014 protocol's CFG treatment, three layouts (2, 1 and 0 boxes)
    in ONE batch, at gate scale 0.5."""
    base = load_base_model(folders[kind])
    ckpt = _user_checkpoint(base, tmp_path / "spatial_adapter_final.pt")
    g = load_protocol("oracle-coco2014").generation
    steps, guidance, scale, layouts = 3, g.guidance_scale, 0.5, [TWO, ONE, ZERO]
    adapter = load_adapter(ckpt, base, inspect_checkpoint(ckpt))
    try:
        ours = _ours(base, layouts, adapter, scale, steps=steps, guidance=guidance,
                     scheduler=g.scheduler, uncond=g.uncond_boxes)
    finally:
        adapter.remove()
    plain = _ours(base, layouts, None, 0.0, steps=steps, guidance=guidance, scheduler=g.scheduler)
    pipe = _pipeline(pipeline, folders[kind], scheduler=base.make_scheduler(g.scheduler))
    state = torch.load(ckpt, weights_only=True)
    for row, layout in enumerate(layouts):
        k = len(layout.objects)
        boxes, mask = torch.zeros(1, max(1, k), 4), torch.zeros(1, max(1, k))
        phrases = torch.zeros(1, max(1, k), base.phrase_dim) if kind == "kolors" else None
        if k:
            boxes[0, :k] = torch.tensor([o.bbox for o in layout.objects])
            mask[0, :k] = 1.0
            if phrases is not None:
                phrases[0, :k] = phrase_vectors([o.name for o in layout.objects], pipe.tokenizer,
                                                pipe.text_encoder, seq_first=True)
        previous = install(pipe.unet, state, boxes, phrases, mask, scale)
        try:
            with torch.no_grad():
                theirs = pipe(layout.caption, height=SIZE, width=SIZE, num_inference_steps=steps,
                              guidance_scale=guidance, latents=_noise(base, layout)[None],
                              output_type="pt").images[0]
        finally:
            pipe.unet.set_attn_processor(previous)
        effect = (theirs - plain[row]).abs().max()
        assert effect > 1e-3, layout.layout_id
        assert (ours[row] - theirs).abs().max() <= 1e-4 * effect, \
            f"{layout.layout_id}: {float((ours[row] - theirs).abs().max()):.3g} vs {float(effect):.3g}"


@pytest.mark.parametrize("family", ["user", "gligen"])
def test_an_image_does_not_depend_on_its_batch(folders, tmp_path: Path, family: str) -> None:
    base = load_base_model(folders["sd"])
    ckpt = _user_checkpoint(base, tmp_path / "u.pt") if family == "user" else \
        _gligen_checkpoint(folders["sd"], tmp_path / "g.pt")[0]
    adapter = load_adapter(ckpt, base, inspect_checkpoint(ckpt))
    try:
        alone = _ours(base, [ONE], adapter, 1.0, steps=2, guidance=3.0, scheduler="DDIMScheduler")
        batched = _ours(base, [ONE, FIVE], adapter, 1.0, steps=2, guidance=3.0,
                        scheduler="DDIMScheduler")
    finally:
        adapter.remove()
    assert (alone[0] - batched[0]).abs().max() <= 1e-5

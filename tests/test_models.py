"""Base models from local folders: the four kinds, encodings, UNet kwargs, decode, file errors.

Prompt encodings are checked against the diffusers pipelines' own ``encode_prompt`` built from the
same components (no download), so "as the pipeline does" is a tested claim, not a comment.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from gatebench.errors import ModelFileError, ProtocolError
from gatebench.models import load_base_model, load_unet
from gatebench.models.base import BaseModel, PromptEmbeddings
from tests import model_builders

KINDS = ("sd", "sdxl", "kolors", "pixel")
BUILDERS = {"sd": model_builders.make_tiny_sd, "sdxl": model_builders.make_tiny_sdxl,
            "kolors": model_builders.make_tiny_kolors, "pixel": model_builders.make_tiny_pixel}
PHRASE_DIM = {"sd": 32, "sdxl": 48, "kolors": 32, "pixel": 32}
# diffusers' ChatGLMTokenizer (Kolors) needs sentencepiece; without it Kolors tests skip, saying so.
NO_SENTENCEPIECE = importlib.util.find_spec("sentencepiece") is None
SKIP_REASON = "Kolors' ChatGLMTokenizer needs the sentencepiece package"


def _kind(kind: str):
    marks = [pytest.mark.skipif(NO_SENTENCEPIECE, reason=SKIP_REASON)] if kind == "kolors" else []
    return pytest.param(kind, marks=marks)


ALL = [_kind(k) for k in KINDS]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base-models")
    return {kind: build(root) for kind, build in BUILDERS.items()
            if not (kind == "kolors" and NO_SENTENCEPIECE)}


@pytest.fixture(scope="module")
def models(folders) -> dict[str, BaseModel]:
    return {kind: load_base_model(folder) for kind, folder in folders.items()}


def _pipeline(model: BaseModel):
    from diffusers import KolorsPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    common = dict(vae=model.vae, unet=model.unet, scheduler=model.make_scheduler())
    if model.kind == "sd":
        return StableDiffusionPipeline(text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False, **common)
    if model.kind == "sdxl":
        return StableDiffusionXLPipeline(text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                         text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2,
                                         add_watermarker=False, **common)
    return KolorsPipeline(text_encoder=model.text_encoder, tokenizer=model.tokenizer, **common)


@pytest.mark.parametrize("kind", ALL)
def test_loads_each_kind(models, folders, kind):
    model = models[kind]
    assert model.kind == kind and model.path == folders[kind].resolve()
    assert (model.vae is None) == (kind == "pixel")
    assert model.phrase_dim == PHRASE_DIM[kind]
    assert model.default_size == (16, 16)
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert f"dim {model.phrase_dim}" in model.phrase_encoding


@pytest.mark.parametrize("kind", [_kind(k) for k in ("sd", "sdxl", "kolors")])
def test_encode_prompts_matches_pipeline(models, kind):
    model = models[kind]
    prompts = ["a red circle on the left", "一只猫"]
    emb = model.encode_prompts(prompts)
    with torch.no_grad():
        ref = _pipeline(model).encode_prompt(prompts, device=model.device, num_images_per_prompt=1,
                                             do_classifier_free_guidance=False)
    torch.testing.assert_close(emb.hidden, ref[0])
    if kind == "sd":
        assert emb.pooled is None and emb.hidden.shape == (2, 77, 32)
    else:
        torch.testing.assert_close(emb.pooled, ref[2])
        length, width, pooled = {"sdxl": (77, 80, 24), "kolors": (256, 32, 32)}[kind]
        assert emb.hidden.shape == (2, length, width) and emb.pooled.shape == (2, pooled)


@pytest.mark.parametrize("kind", [_kind(k) for k in ("sdxl", "kolors")])
def test_time_ids_match_pipeline(models, kind):
    model = models[kind]
    emb = model.encode_prompts(["x", "y", "z"])
    kwargs = model.unet_kwargs(emb, 16, 24)["added_cond_kwargs"]
    ref = _pipeline(model)._get_add_time_ids((16, 24), (0, 0), (16, 24), dtype=torch.float32,
                                             text_encoder_projection_dim=emb.pooled.shape[1])
    torch.testing.assert_close(kwargs["time_ids"], ref.repeat(3, 1))
    assert kwargs["text_embeds"] is emb.pooled


def test_pixel_prompts_and_no_unet_kwargs(models):
    emb = models["pixel"].encode_prompts(["red circle"])
    assert emb.hidden.shape == (1, 77, 32) and emb.pooled is None
    assert models["pixel"].unet_kwargs(emb, 16, 16) == {} and models["sd"].unet_kwargs(emb, 16, 16) == {}


@pytest.mark.parametrize("kind", ALL)
def test_encode_phrases_shape_zeros_and_manual_mean(models, kind):
    model = models[kind]
    vectors = model.encode_phrases(["red circle", "", "blue square", "  "])
    assert vectors.shape == (4, model.phrase_dim) and vectors.dtype == torch.float32
    assert torch.all(vectors[1] == 0) and torch.all(vectors[3] == 0)
    assert vectors[0].abs().sum() > 0 and not torch.allclose(vectors[0], vectors[2])
    assert model.encode_phrases([]).shape == (0, model.phrase_dim)
    # Manual: the phrase alone, unpadded, every token's last hidden state averaged.
    tokenizer = model.tokenizer_2 if kind == "sdxl" else model.tokenizer
    encoder = model.text_encoder_2 if kind == "sdxl" else model.text_encoder
    ids = tokenizer(["red circle"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = encoder(ids).last_hidden_state
    hidden = hidden.permute(1, 0, 2) if kind == "kolors" else hidden
    torch.testing.assert_close(vectors[0], hidden[0].mean(0), rtol=1e-4, atol=1e-5)
    # Padding-invariant: the same phrase next to a long one gives the same vector.
    long = model.encode_phrases(["red circle", "a big blue triangle on the left of the grass"])
    torch.testing.assert_close(long[0], vectors[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ALL)
def test_unet_forward_and_decode(models, kind):
    model = models[kind]
    height, width = model.default_size
    shape = model.latent_shape(height, width)
    assert shape == ((3, 16, 16) if kind == "pixel" else (4, 8, 8))
    emb = model.encode_prompts(["red circle", "green square"])
    latents = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.unet(latents, torch.tensor([999, 10]), encoder_hidden_states=emb.hidden,
                         **model.unet_kwargs(emb, height, width)).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()
    images = model.decode(out)
    assert images.shape == (2, 3, height, width) and images.min() >= 0 and images.max() <= 1
    encoded = model.encode_images(images)
    assert encoded.shape == latents.shape
    if kind == "pixel":
        torch.testing.assert_close(model.decode(encoded), images)


def test_latent_shape_rejects_bad_size(models):
    with pytest.raises(ProtocolError, match="divisible by 2"):
        models["sd"].latent_shape(15, 16)


def test_prompt_embeddings_cat_and_index():
    a = PromptEmbeddings(torch.zeros(2, 3, 4), torch.zeros(2, 5))
    b = PromptEmbeddings(torch.ones(1, 3, 4), torch.ones(1, 5))
    both = a.cat(b)
    assert both.hidden.shape == (3, 3, 4) and both.pooled.shape == (3, 5) and len(both) == 3
    picked = both.index([2, 0, 2])
    assert picked.hidden[:, 0, 0].tolist() == [1, 0, 1] and picked.pooled[:, 0].tolist() == [1, 0, 1]
    assert both.index(torch.tensor([1])).hidden.shape == (1, 3, 4)
    plain = PromptEmbeddings(torch.zeros(1, 3, 4), None)
    assert plain.cat(plain).pooled is None and plain.index([0, 0]).pooled is None
    with pytest.raises(ValueError):
        a.cat(plain)


def test_identity_hashes_weight_files(models):
    model = models["sdxl"]
    identity = model.identity()
    assert identity["kind"] == "sdxl" and identity["path"] == str(model.path)
    weights = identity["weights"]
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"} <= set(weights)
    unet_file = model.path / "unet" / "diffusion_pytorch_model.safetensors"
    expected = hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert weights["unet/diffusion_pytorch_model.safetensors"] == expected
    assert all(len(v) == 64 for v in weights.values())
    assert model.identity() == identity


def test_make_scheduler(models):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    model = models["sd"]
    assert isinstance(model.make_scheduler(), DDIMScheduler)
    euler = model.make_scheduler("EulerDiscreteScheduler")
    assert isinstance(euler, EulerDiscreteScheduler) and euler.config.beta_schedule == "scaled_linear"
    for bad in ("NoSuchScheduler", "UNet2DConditionModel"):
        with pytest.raises(ProtocolError, match=bad):
            model.make_scheduler(bad)


def test_load_unet(folders):
    from diffusers import UNet2DConditionModel

    unet = load_unet(folders["sdxl"])
    assert isinstance(unet, UNet2DConditionModel) and unet.config.addition_embed_type == "text_time"
    assert isinstance(load_unet(folders["sd"] / "unet"), UNet2DConditionModel)


def _copy(folders, kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folders[kind], tmp_path / kind))


def test_missing_folder_is_a_model_file_error(tmp_path):
    missing = tmp_path / "no-such-model"
    for load in (load_base_model, load_unet):
        with pytest.raises(ModelFileError) as err:
            load(missing)
        assert str(missing) in str(err.value) and "got nothing" in str(err.value)


def test_missing_model_index(folders, tmp_path):
    folder = _copy(folders, "sd", tmp_path)
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelFileError) as err:
        load_base_model(folder)
    assert str(folder / "model_index.json") in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize("kind, relative", [
    ("sd", "unet/diffusion_pytorch_model.safetensors"),
    ("sdxl", "text_encoder_2/model.safetensors"),
    pytest.param("kolors", "tokenizer/tokenizer.model",
                 marks=pytest.mark.skipif(NO_SENTENCEPIECE, reason=SKIP_REASON)),
    ("pixel", "unet/config.json"),
    ("sd", "scheduler/scheduler_config.json"),
])
def test_missing_file_names_it(folders, tmp_path, kind, relative):
    folder = _copy(folders, kind, tmp_path)
    (folder / relative).unlink()
    with pytest.raises(ModelFileError) as err:
        load_base_model(folder)
    message = str(err.value)
    assert Path(relative).name.split(".")[0] in message and str((folder / relative).parent) in message
    assert message.startswith("expected")


def test_missing_unet_weights_for_load_unet(folders, tmp_path):
    folder = _copy(folders, "pixel", tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="diffusion_pytorch_model.safetensors"):
        load_unet(folder)


def test_corrupt_weights_is_a_model_file_error(folders, tmp_path):
    folder = _copy(folders, "pixel", tmp_path)
    (folder / "text_encoder" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="CLIPTextModel"):
        load_base_model(folder)


def test_kind_detection(folders, tmp_path):
    folder = _copy(folders, "pixel", tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "MyOwnPipeline"            # unknown name, but no VAE: a pixel model
    (folder / "model_index.json").write_text(json.dumps(index))
    assert load_base_model(folder).kind == "pixel"
    sd = _copy(folders, "sd", tmp_path / "x")
    index = json.loads((sd / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusion3Pipeline"
    (sd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match="StableDiffusion3Pipeline"):
        load_base_model(sd)


def test_wrong_or_partial_unet_weights_are_refused(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(ModelFileError, match="expected a UNet2DConditionModel config, got 'AutoencoderKL'"):
        load_unet(folders["sd"] / "vae")
    folder = _copy(folders, "sd", tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("conv_in.weight")
    save_file(state, weights)
    with pytest.raises(ModelFileError, match="1 missing .e.g. conv_in.weight"):
        load_base_model(folder)

"""Base diffusion models from LOCAL diffusers-format folders (never a hub id, never a download).

``load_base_model(path)`` reads ``model_index.json`` to tell the kind (``sd``, ``sdxl``,
``kolors``, ``pixel``), checks every file it needs is there (files.py: a missing one is a
ModelFileError naming the file and the fix), loads each component with ``local_files_only=True``,
freezes it and returns a :class:`BaseModel` (base.py) with one interface for all kinds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from gatebench.errors import GatebenchError, ModelFileError
from gatebench.models.base import MODEL_CLASSES, BaseModel
from gatebench.models.files import ModelFolder, inspect_folder, read_json, weight_files

__all__ = ["load_base_model", "load_unet"]


def _load(what: str, folder: Path, fn: Callable[[], Any]) -> Any:
    """Run a from_pretrained; a file it cannot use becomes a one-line ModelFileError."""
    try:
        return fn()
    except (GatebenchError, torch.OutOfMemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:   # noqa: BLE001 - loaders raise OSError, ValueError, RuntimeError, ...
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelFileError(f"expected a loadable {what} in {folder}, got {type(exc).__name__}: {reason}",
                             path=folder, hint="re-save it with save_pretrained or copy it again") from exc


# Recomputed at init (buffers) or unused for encoding (ChatGLM's LM head): releases may omit them.
_OPTIONAL = ("inv_freq", "position_ids", "output_layer.weight")


def _checked(what: str, folder: Path, loaded) -> Any:
    """A from_pretrained(output_loading_info=True) result -> the model, or a ModelFileError when
    weights are missing (diffusers and transformers would otherwise init them at random)."""
    model, info = loaded
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith(_OPTIONAL)]
    if missing:
        raise ModelFileError(f"expected {what} weights for every parameter, got {len(missing)} missing "
                             f"(e.g. {sorted(missing)[0]}) in {folder}", path=folder,
                             hint="this folder holds another model's weights or a partial copy")
    return model


def _diffusers(cls, component, dtype: torch.dtype):
    config = read_json(component.folder / "config.json", f"the {component.name} config")
    if config.get("_class_name", cls.__name__) != cls.__name__:
        raise ModelFileError(f"expected a {cls.__name__} config, got {config['_class_name']!r} in "
                             f"{component.folder / 'config.json'}", path=component.folder / "config.json")
    loaded = _load(cls.__name__, component.folder, lambda: cls.from_pretrained(
        component.folder, local_files_only=True, torch_dtype=dtype, variant=component.variant,
        output_loading_info=True))
    return _checked(cls.__name__, component.folder, loaded)


def _transformers(cls, component, dtype: torch.dtype):
    loaded = _load(cls.__name__, component.folder, lambda: cls.from_pretrained(
        component.folder, local_files_only=True, dtype=dtype, variant=component.variant,
        output_loading_info=True))
    return _checked(cls.__name__, component.folder, loaded)


def _tokenizer(cls, folder: Path):
    return _load(cls.__name__, folder, lambda: cls.from_pretrained(folder, local_files_only=True))


def _tokenizer_class(path: Path, default):
    """model_index.json may name a fast word-level tokenizer (the shapes world's, for Chinese)."""
    index = read_json(path / "model_index.json", "the model index")
    name = (index.get("tokenizer") or [None, None])[1]
    if name == "PreTrainedTokenizerFast":
        from transformers import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast
    return default


def load_base_model(path: str | Path, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a frozen (eval, no grad) base model of any supported kind from a local folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder: ModelFolder = inspect_folder(path)
    device = torch.device(device)
    comps = folder.components
    parts: dict[str, Any] = {"unet": _diffusers(UNet2DConditionModel, comps["unet"], dtype)}
    if "vae" in comps:
        vae_config = read_json(comps["vae"].folder / "config.json", "the vae config")
        # SDXL's VAE overflows in fp16: keep it in fp32 as the pipelines do (force_upcast).
        vae_dtype = torch.float32 if dtype == torch.float16 and vae_config.get("force_upcast") else dtype
        parts["vae"] = _diffusers(AutoencoderKL, comps["vae"], vae_dtype)
    if folder.kind == "kolors":
        from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer

        parts["text_encoder"] = _transformers(ChatGLMModel, comps["text_encoder"], dtype)
        parts["tokenizer"] = _tokenizer(ChatGLMTokenizer, folder.path / "tokenizer")
    else:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        parts["text_encoder"] = _transformers(CLIPTextModel, comps["text_encoder"], dtype)
        parts["tokenizer"] = _tokenizer(_tokenizer_class(folder.path, CLIPTokenizer),
                                        folder.path / "tokenizer")
        if folder.kind == "sdxl":
            parts["text_encoder_2"] = _transformers(CLIPTextModelWithProjection,
                                                    comps["text_encoder_2"], dtype)
            parts["tokenizer_2"] = _tokenizer(CLIPTokenizer, folder.path / "tokenizer_2")
    for part in parts.values():
        if isinstance(part, torch.nn.Module):
            part.to(device).eval().requires_grad_(False)
    return MODEL_CLASSES[folder.kind](folder, parts, device, dtype)


def load_unet(path: str | Path):
    """Just the UNet2DConditionModel of a base model folder (``path/unet``; a unet folder works too)."""
    from diffusers import UNet2DConditionModel

    path = Path(path).expanduser()
    unet_dir = path if (path / "config.json").is_file() and not (path / "unet").is_dir() else path / "unet"
    if not path.exists():
        inspect_folder(path)    # raises the standard "got nothing at PATH" error
    component = weight_files(unet_dir, "diffusers")
    return _diffusers(UNet2DConditionModel, component, torch.float32).eval()

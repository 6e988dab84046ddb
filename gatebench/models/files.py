"""What a local diffusers-format model folder must hold, checked before anything is loaded.

Every missing piece is a :class:`ModelFileError` naming the exact file and what to put there, so
the CLI can print one line and exit 2. The weight files found here are exactly those the loaders
will read (safetensors before .bin, a sharded index's shards, an ``fp16`` variant only when no
full-precision file exists), so the hashes in ``identity()`` describe what was really used.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gatebench.errors import ModelFileError

PIPELINE_KINDS = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "KolorsPipeline": "kolors",
    "GatebenchPixelPipeline": "pixel",
}
# component folder -> weight family, per kind (tokenizers are checked separately)
COMPONENTS = {
    "sd": {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers"},
    "sdxl": {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers",
             "text_encoder_2": "transformers"},
    "kolors": {"unet": "diffusers", "vae": "diffusers", "text_encoder": "transformers"},
    "pixel": {"unet": "diffusers", "text_encoder": "transformers"},
}
TOKENIZERS = {"sd": ("tokenizer",), "sdxl": ("tokenizer", "tokenizer_2"), "kolors": ("tokenizer",),
              "pixel": ("tokenizer",)}
_WEIGHT_NAMES = {"diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
                 "transformers": ("model.safetensors", "pytorch_model.bin")}
_FIX = ("copy the model's diffusers-format folder (as written by save_pretrained) there; "
        "gatebench never downloads weights")


@dataclass(frozen=True)
class Component:
    name: str
    folder: Path
    weights: tuple[Path, ...]
    variant: str | None            # "fp16" when only the half-precision variant is present


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    kind: str
    components: dict[str, Component]
    tokenizer_files: tuple[Path, ...]
    scheduler_config: dict


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "nothing"


def _add_variant(name: str, variant: str | None) -> str:
    """Insert the variant before the last suffix, as diffusers and transformers name files."""
    if not variant:
        return name
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant, parts[-1]])


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ModelFileError(f"expected {what} at {path}, got {_listing(path.parent)} in {path.parent}",
                             path=path, hint=_FIX)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"expected {what} (valid JSON), got unreadable JSON ({exc})", path=path,
                             hint=_FIX) from None
    if not isinstance(data, dict):
        raise ModelFileError(f"expected {what} (a JSON object), got {type(data).__name__}", path=path)
    return data


def weight_files(folder: Path, family: str) -> Component:
    """The weight files a from_pretrained(local_files_only=True) of ``folder`` will read."""
    if not folder.is_dir():
        raise ModelFileError(f"expected a '{folder.name}/' folder, got {_listing(folder.parent)} "
                             f"in {folder.parent}", path=folder.parent, hint=_FIX)
    read_json(folder / "config.json", f"the {folder.name} config (config.json)")
    for variant in (None, "fp16"):
        for base in _WEIGHT_NAMES[family]:
            name = _add_variant(base, variant)
            if (folder / name).is_file():
                return Component(folder.name, folder, (folder / name,), variant)
            index = folder / _add_variant(base + ".index.json", variant)
            if index.is_file():
                shards = sorted(set(read_json(index, "a weight index").get("weight_map", {}).values()))
                missing = [s for s in shards if not (folder / s).is_file()]
                if not shards or missing:
                    got = "no weight_map" if not shards else "missing " + ", ".join(missing)
                    raise ModelFileError(f"expected the shards listed in {index.name}, got {got} in {folder}",
                                         path=folder, hint=_FIX)
                return Component(folder.name, folder, tuple(folder / s for s in shards), variant)
    wanted = " or ".join(_WEIGHT_NAMES[family])
    raise ModelFileError(f"expected the {folder.name} weights ({wanted}), got {_listing(folder)} in "
                         f"{folder}", path=folder, hint=_FIX)


def tokenizer_files(folder: Path, kind: str) -> tuple[Path, ...]:
    options: tuple[tuple[str, ...], ...]
    if kind == "kolors":
        options = (("tokenizer.model",),)
    else:
        options = (("tokenizer.json",), ("vocab.json", "merges.txt"))
    for names in options:
        if all((folder / n).is_file() for n in names):
            extra = folder / "tokenizer_config.json"
            return tuple(folder / n for n in names) + ((extra,) if extra.is_file() else ())
    wanted = " or ".join(" + ".join(names) for names in options)
    raise ModelFileError(f"expected the {folder.name} files ({wanted}), got {_listing(folder)} in {folder}",
                         path=folder, hint=_FIX)


def detect_kind(path: Path, index: dict) -> str:
    """sd / sdxl / kolors / pixel from model_index.json's ``_class_name`` (no vae => pixel)."""
    class_name = index.get("_class_name")
    if class_name in PIPELINE_KINDS:
        return PIPELINE_KINDS[class_name]
    if "vae" not in index and not (path / "vae").is_dir():
        return "pixel"
    raise ModelFileError(f"expected model_index.json '_class_name' to be one of "
                         f"{', '.join(PIPELINE_KINDS)}, got {class_name!r} in {path / 'model_index.json'}",
                         path=path / "model_index.json",
                         hint="gatebench supports SD 1.x/2.x, SDXL, Kolors and its own pixel models")


def inspect_folder(path: str | Path) -> ModelFolder:
    """Check everything a base model needs is on disk; raise ModelFileError naming what is not."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"expected a diffusers-format base model folder (model_index.json, unet/, "
                             f"...), got nothing at {path}", path=path, hint=_FIX)
    if not path.is_dir():
        raise ModelFileError(f"expected a diffusers-format base model folder, got a file at {path}",
                             path=path, hint="pass the folder that holds model_index.json")
    path = path.resolve()
    index = read_json(path / "model_index.json", "model_index.json (the diffusers pipeline index)")
    kind = detect_kind(path, index)
    components = {name: weight_files(path / name, family) for name, family in COMPONENTS[kind].items()}
    tokenizers: list[Path] = []
    for name in TOKENIZERS[kind]:
        if not (path / name).is_dir():
            raise ModelFileError(f"expected a '{name}/' folder, got {_listing(path)} in {path}", path=path,
                                 hint=_FIX)
        tokenizers.extend(tokenizer_files(path / name, kind))
    scheduler = read_json(path / "scheduler" / "scheduler_config.json", "the scheduler config "
                          "(scheduler/scheduler_config.json)")
    return ModelFolder(path, kind, components, tuple(tokenizers), scheduler)

"""Generated images on disk and in memory: the recipe-hashed cache folder (``ImageCache``), PNG
writes and reads with gatebench's metadata chunk, and the images kept in memory for scoring
(``KeptImages``). The sampler (generate.py) writes through it; plan.py names its folders;
score_run.py reads the metadata back.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, PngImagePlugin

from gatebench.files import atomic_output, atomic_write_bytes


def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


_UNSAFE = re.compile(r"[\\/:*?\"<>|\x00-\x1f]")


class ImageCache:
    """One folder per recipe: ``{label}-{hash16}/{layout_id}__s{scale}.png`` + ``recipe.json``."""

    def __init__(self, root: Path, label: str, recipe: dict[str, Any]) -> None:
        self.recipe = recipe
        self.hash = recipe_hash(recipe)
        self.folder = Path(root) / f"{_UNSAFE.sub('_', label)}-{self.hash[:16]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / "recipe.json"
        if not manifest.exists():
            atomic_write_bytes(manifest, json.dumps(recipe, indent=2, sort_keys=True,
                                                     ensure_ascii=False, default=str).encode())

    def path_for(self, layout_id: str, gate_scale: float) -> Path:
        return self.folder / f"{_UNSAFE.sub('_', layout_id)}__s{gate_scale:g}.png"


def write_png(path: Path, image: np.ndarray, meta: dict[str, Any]) -> None:
    """Atomic PNG write with our metadata in a text chunk (so a resumed run keeps NaN counts)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("gatebench", json.dumps(meta, ensure_ascii=False))
    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"      # the IEND chunk, its CRC included


def png_problem(path: Path, width: int, height: int) -> str | None:
    """Why the cached PNG at ``path`` cannot be used as a ``width`` x ``height`` image (a short
    reason), or None when it can. Cheap: the signature, the header's size, the closing IEND
    chunk and every chunk's CRC (PIL's ``verify``), without decompressing the pixels; once per
    image, when the sampler decides what is still to generate."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - len(_PNG_END)))
            tail = handle.read()
        if size == 0:
            return "zero bytes"
        if len(head) < 24 or not head.startswith(_PNG_SIGNATURE):
            return f"not a PNG ({size} bytes)"
        got = struct.unpack(">II", head[16:24])
        if got != (width, height):
            return f"{got[0]}x{got[1]}, expected {width}x{height}"
        if tail != _PNG_END:
            return f"truncated ({size} bytes, no IEND)"
        with open(path, "rb") as handle:     # the PNG plugin itself: Image.open may be patched
            PngImagePlugin.PngImageFile(handle).verify()      # (ultralytics: a pi_heif fallback)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
            zlib.error) as exc:
        return f"does not decode: {type(exc).__name__}"
    return None


def read_png_meta(path: Path) -> dict[str, Any]:
    with Image.open(path) as image:
        text = image.info.get("gatebench")
    return json.loads(text) if text else {}


KEEP_IMAGES_BYTES = 4 << 30     # KeptImages' default budget: 4 GiB (~1400 RGB 1024px images)


class KeptImages:
    """Generated images kept in memory for scoring, by path: the uint8 HWC arrays the PNGs were
    written from (read-only), so scoring from them gives the numbers a read-back gives.

    At most ``max_bytes``: past it, later images are only on disk (the first ones kept stay;
    a run makes its gate-0 images first, and those are also every other image's twin). Only
    what this process generated is here: cached images and other ranks' shards are read."""

    def __init__(self, max_bytes: int = KEEP_IMAGES_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._images: dict[Path, np.ndarray] = {}
        # told of every image kept (plan.generate_all: its health starts while the sampler runs)
        self.on_keep: Callable[[Path, np.ndarray], None] | None = None

    def put(self, path: Path, image: np.ndarray) -> bool:
        """Keep ``image`` for ``path`` if the budget allows; True when kept."""
        if path in self._images or self.bytes + image.nbytes > self.max_bytes:
            return False
        self._images[Path(path)] = image
        self.bytes += image.nbytes
        if self.on_keep is not None:
            self.on_keep(Path(path), image)
        return True

    def get(self, path: Path | None) -> np.ndarray | None:
        return None if path is None else self._images.get(Path(path))

    def __len__(self) -> int:
        return len(self._images)

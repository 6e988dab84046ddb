"""One way to turn what callers pass as an image (path, PIL, HWC array) into an RGB PIL image."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def to_pil_rgb(image: Any) -> Any:
    """Path / PIL image / HWC array (uint8, or floats in [0, 1]) -> RGB PIL image."""
    from PIL import Image  # noqa: PLC0415

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")

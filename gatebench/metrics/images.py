"""One way to turn what callers pass as an image (path, PIL, HWC array) into an RGB PIL image."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:     # PIL loads when an image is converted
    from PIL.Image import Image as PILImage

# What callers pass as an image: a file path, a PIL image or an HWC array (uint8, or floats in
# [0, 1]); to_pil_rgb turns each into an RGB PIL image.
ImageLike = Union[str, Path, "PILImage", np.ndarray]

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _high_bit_to_rgb(im: Any) -> Any:
    """16-bit (and 32-bit int / float) greyscale -> 8-bit RGB by scaling, not clipping: PIL's
    own ``convert("RGB")`` clips every value above 255, and a 16-bit PNG turned all white."""
    from PIL import Image  # noqa: PLC0415

    arr = np.asarray(im).astype(np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if im.mode.startswith("I;16"):
        full = 65535.0
    elif im.mode == "F":
        full = 1.0 if peak <= 1.0 else 255.0
    else:                           # "I": 16-bit PNGs open as I in some Pillow versions
        full = 65535.0 if peak > 255.0 else 255.0
    scaled = np.clip(arr / full, 0.0, 1.0)
    return Image.fromarray((scaled * 255.0).round().astype(np.uint8), "L").convert("RGB")


def _convert(im: Any) -> Any:
    return _high_bit_to_rgb(im) if im.mode in _HIGH_BIT_MODES else im.convert("RGB")


def to_pil_rgb(image: ImageLike) -> PILImage:
    """Path / PIL image / HWC array (uint8, or floats in [0, 1]) -> RGB PIL image.

    A file that would decode to more pixels than PIL's limit (a decompression bomb) is refused
    before it is decoded: a MetricError naming the file, like any unreadable image."""
    import warnings  # noqa: PLC0415

    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    from gatebench.errors import MetricError  # noqa: PLC0415

    if isinstance(image, (str, Path)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(image) as im:
                    return _convert(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MetricError(f"expected an image of at most {Image.MAX_IMAGE_PIXELS} pixels, "
                              f"got a larger one (a decompression bomb?) ({exc})", path=image,
                              hint="resize it, or remove it from the images folder") from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise MetricError(f"expected a readable image, got {exc}", path=image) from None
    if isinstance(image, Image.Image):
        return _convert(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")

"""Training data: the user's layout JSONL + images, resized with boxes kept consistent.

Images are resized to the square training resolution without cropping, so normalised boxes stay
exactly valid (a crop would have to move and clip them). Cleaning thresholds are the user's.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gatebench.errors import LayoutError
from gatebench.layouts import Layout, load_layouts


@dataclass(frozen=True)
class Example:
    image: torch.Tensor            # (3, H, W) in [0, 1]
    layout: Layout


class LayoutImageDataset:
    def __init__(self, layouts_path: Path, image_dir: Path | None, resolution: int, *,
                 min_area: float, max_area: float, min_side: float, max_boxes: int) -> None:
        report = load_layouts(layouts_path, "auto", min_area=min_area, max_area=max_area,
                              min_side=min_side, max_boxes=max_boxes)
        self.layouts = [lay for lay in report.layouts if lay.objects]
        self.dropped_boxes = report.dropped_boxes
        if not self.layouts:
            raise LayoutError("expected training layouts with at least one box after cleaning, "
                              "got none", path=layouts_path, hint="loosen --min-area/--min-side")
        self.image_dir = image_dir or layouts_path.parent
        self.resolution = resolution
        self.data_sha256 = hashlib.sha256(Path(layouts_path).read_bytes()).hexdigest()
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.layouts)

    def _image(self, index: int) -> torch.Tensor:
        if index in self._cache:
            return self._cache[index]
        layout = self.layouts[index]
        if not layout.image_path:
            raise LayoutError(f"expected an image_path for layout {layout.layout_id}, got none")
        path = Path(layout.image_path)
        path = path if path.is_absolute() else self.image_dir / path
        if not path.is_file():
            raise LayoutError(f"expected the training image of layout {layout.layout_id}, got a "
                              f"missing file", path=path, hint="check --image-dir")
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (self.resolution, self.resolution):
                image = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self.resolution <= 64:  # tiny worlds fit in memory: decode each PNG once
            self._cache[index] = tensor
        return tensor

    def __getitem__(self, index: int) -> Example:
        return Example(self._image(index), self.layouts[index])


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """A deterministic permutation per (seed, epoch), sharded by rank: resumable exactly.

    Padded (by wrapping around) to a multiple of ``world`` so every rank runs the same number of
    steps, as torch's DistributedSampler does; DDP would hang on uneven shards.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    order += order[: (-len(order)) % world]
    return order[rank::world]

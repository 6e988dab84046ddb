"""The embedded synthetic "shapes" world: data generator, class table and small real models.

``gatebench.world.shapes`` generates the data (no heavy imports); ``gatebench.world.clip_model``
loads the world's small open_clip model (imports torch/open_clip). The trained weights live in
``gatebench/world/assets/`` and are rebuilt by ``train/world/build_assets.sh``.
"""
from pathlib import Path

from gatebench.world.shapes import (CLASS_BY_EN, CLASS_BY_ID, CLASS_BY_ZH, CLASS_NAMES_EN,
                                    CLASS_NAMES_ZH, CLASSES, DEFAULT_SIZE, DEFAULT_SPLITS, Sample,
                                    ShapeClass, WorldObject, caption_en, caption_zh, export_yolo,
                                    generate_split, generate_world, layout_row, read_split,
                                    render_sample)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DETECTOR_WEIGHTS = ASSETS_DIR / "world_yolo.pt"
CLIP_WEIGHTS = ASSETS_DIR / "world_clip.safetensors"
CLIP_CONFIG = ASSETS_DIR / "world_clip.json"

__all__ = [
    "ASSETS_DIR", "CLASSES", "CLASS_BY_EN", "CLASS_BY_ID", "CLASS_BY_ZH", "CLASS_NAMES_EN",
    "CLASS_NAMES_ZH", "CLIP_CONFIG", "CLIP_WEIGHTS", "DEFAULT_SIZE", "DEFAULT_SPLITS",
    "DETECTOR_WEIGHTS", "Sample", "ShapeClass", "WorldObject", "caption_en", "caption_zh",
    "export_yolo", "generate_split", "generate_world", "layout_row", "read_split", "render_sample",
]

"""The embedded synthetic "shapes" world: data generator, class table and small real models.

``gatebench.world.shapes`` generates the data (no heavy imports); ``gatebench.world.clip_model``
loads the world's small open_clip model (imports torch/open_clip). The trained weights live in
``gatebench/world/assets/`` (``gatebench.protocol.ASSETS_DIR``) and are rebuilt by
``train/world/build_assets.sh``.
"""

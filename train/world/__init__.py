"""Scripts that rebuild the shapes world's assets (data, YOLO detector, small open_clip model).

See ``train/world/README.md`` and ``train/world/build_assets.sh``.
"""

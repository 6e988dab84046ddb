"""Metric building blocks: matching, COCO AP, FID/KID, CLIP score, image health, bootstrap.

Each is a plain function over arrays/images in its own module (import it from there);
``gatebench.score`` composes them into the stage. The metric table (``gatebench.metrics.spec``)
says what each metric is. This package file imports nothing, so importing the light ``spec`` (as
``gatebench.protocol`` does) pulls in neither scipy nor ``health``; heavy dependencies (torch,
transformers, open_clip, faster-coco-eval) are imported lazily inside the modules that need them.
"""

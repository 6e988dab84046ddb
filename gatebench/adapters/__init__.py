"""Adapter families: the user's per-width spatial adapter and diffusers' GLIGEN fusers."""
from gatebench.adapters.user import (INIT_SCHEMES, AdapterSet, Grounding, SpatialAdapter,
                                     apply_init, attn2_widths, inject)

__all__ = ["INIT_SCHEMES", "AdapterSet", "Grounding", "SpatialAdapter", "apply_init",
           "attn2_widths", "inject"]

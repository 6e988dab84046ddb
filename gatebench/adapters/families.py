"""The adapter families gatebench knows, in recognition order.

gatebench.checkpoint (recognise a file, read its gates, its forward config, the header's
``family`` field) and gatebench.checkpoint.load_adapter (build the runtime) read only
this table. It is a module of its own, not part of registry.py, because registry.py imports
gatebench.checkpoint for load_adapter and checkpoint.py imports this: no cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gatebench.adapters.family import AdapterFamily
from gatebench.adapters.gligen import GLIGEN_FAMILY
from gatebench.adapters.user_runtime import USER_FAMILY
from gatebench.errors import CheckpointError
from gatebench.readers.checkpoint_header import either

# Order matters: the first family that recognises a file's keys reads it (user before gligen).
FAMILIES: dict[str, AdapterFamily] = {f.name: f for f in (USER_FAMILY, GLIGEN_FAMILY)}


def register_family(family: AdapterFamily) -> None:
    """Add a family (last in recognition order); a second one under a known name is refused."""
    if family.name in FAMILIES or family.name == "gatebench":
        raise ValueError(f"adapter family {family.name!r} is already registered")
    FAMILIES[family.name] = family


def recognise(keys: Sequence[str]) -> AdapterFamily | None:
    """The first family whose keys these are, or None."""
    return next((family for family in FAMILIES.values() if family.recognise(keys)), None)


def family_of(name: str, path: Path | None = None) -> AdapterFamily:
    """The registered family called ``name``; a CheckpointError naming the file otherwise."""
    if name not in FAMILIES:
        raise CheckpointError(f"expected adapter family {either(FAMILIES)}, got {name!r}",
                              path=path)
    return FAMILIES[name]

"""Every input file a protocol names, checked at once before any model loads.

A new machine has none of them, and stopping at the first missing file made the user meet the
next one a run later (layouts, then the real images, then the base model, ...). Each input is
looked at on disk (existence and shape only: each loader still checks contents) and every
problem is listed in one error, with the protocol key or flag that sets the path and what must
be there. Relative paths resolve from the working directory, as the loaders resolve them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gatebench.errors import MissingInputsError, ModelFileError
from gatebench.models.files import inspect_folder
from gatebench.protocol import Protocol
from gatebench.readers.protocol_values import flag_for

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"   # torch-fidelity's FID Inception


@dataclass(frozen=True)
class MissingInput:
    """One input that is not there: where it is set, what it must be, what was found."""

    section: str
    key: str
    expected: str
    got: str

    @property
    def setting(self) -> str:
        """``[data] layouts (or --layouts)``: what the user edits to fix it."""
        flag = flag_for(self.section, self.key)
        return f"[{self.section}] {self.key}" + (f" (or {flag})" if flag else "")

    def line(self) -> str:
        return f"{self.setting}: expected {self.expected}, got {self.got}"


def _file(path: Path) -> str | None:
    """What was found instead of a file at ``path`` (None when it is one)."""
    if path.is_file():
        return None
    return f"a folder '{path}'" if path.is_dir() else f"a missing path '{path}'"


def _folder(path: Path) -> str | None:
    if path.is_dir():
        return None
    return f"a file '{path}'" if path.exists() else f"a missing path '{path}'"


def _holding(name: str) -> Callable[[Path], str | None]:
    """A folder with ``name`` in it (a transformers save_pretrained folder: config.json)."""
    def problem(path: Path) -> str | None:
        return _folder(path) or (None if (path / name).is_file()
                                 else f"a folder without {name} '{path}'")
    return problem


def _detector(path: Path) -> str | None:
    """A YOLO .pt file, or a folder holding a zero-shot detector's config.json."""
    if path.is_dir():
        return _holding("config.json")(path)
    return _file(path)


def _with_config(path: Path) -> str | None:
    """The shapes world's CLIP: the weights file and its .json config beside it."""
    config = path.with_suffix(".json")
    return _file(path) or (None if config.is_file() else f"no config beside it '{config}'")


def _base_model(path: Path) -> str | None:
    """A diffusers folder checked as the loader checks it (models.files: no weights read)."""
    if (problem := _folder(path)) is not None:
        return problem
    try:
        inspect_folder(path)
    except ModelFileError as exc:
        return f"'{path}', which the loader refuses ({exc.message})"
    return None


def _clip(protocol: Protocol) -> tuple[str, Callable[[Path], str | None]]:
    """What [models] clip_model must be for the protocol's clip_backend, and its check."""
    m = protocol.models
    if m.clip_backend == "transformers":
        return ("a CLIP model folder with config.json (save_pretrained of a CLIPModel or "
                "ChineseCLIPModel and its processor)", _holding("config.json"))
    if m.clip_backend == "gatebench-world":
        return "the shapes world's CLIP weights (.safetensors, its .json beside it)", _with_config
    return f"a local open_clip weights file for clip_arch {m.clip_arch!r}", _file


def missing_inputs(protocol: Protocol) -> list[MissingInput]:
    """Every input of ``protocol`` a run would fail on, in the order the run reads them.

    Required: the layouts and the base model. Optional inputs (real images, detector, CLIP,
    Inception) are checked when the protocol names them: an unnamed one is a metric reported
    as not computed, a named one that is missing is an error."""
    d, m = protocol.data, protocol.models
    checks: list[tuple[str, str, str, Path | None, Callable]] = [
        ("data", "layouts", "the layout JSONL (or a COCO instances .json) file",
         Path(d.layouts) if d.layouts else None, _file)]
    for key, what in (("coco_captions", "a COCO captions .json file"),
                      ("zh_captions", "a Chinese captions file keyed by COCO image id")):
        if getattr(d, key):
            checks.append(("data", key, what, Path(getattr(d, key)), _file))
    if d.image_dir:
        checks.append(("data", "image_dir", "the folder of the layouts' real images (FID "
                       "reference, detector ceiling)", Path(d.image_dir), _folder))
    checks.append(("models", "base_model", "a local diffusers-format base model folder "
                   "(model_index.json, unet/, ...)",
                   Path(m.base_model).expanduser() if m.base_model else None, _base_model))
    if m.detector:
        checks.append(("models", "detector", "an ultralytics YOLO weights file (.pt, COCO "
                       "classes) or a zero-shot detector's transformers folder (config.json)",
                       Path(m.detector), _detector))
    if m.clip_model:
        expected, check = _clip(protocol)
        checks.append(("models", "clip_model", expected, Path(m.clip_model), check))
    if m.fid_features == "inception" and m.inception_weights:
        checks.append(("models", "inception_weights", f"torch-fidelity's FID Inception weights "
                       f"file {INCEPTION_FILE}", Path(m.inception_weights), _file))
    missing = []
    for section, key, expected, path, problem_of in checks:
        if path is None:
            missing.append(MissingInput(section, key, expected, "nothing (not set)"))
        elif (got := problem_of(path)) is not None:
            missing.append(MissingInput(section, key, expected, got))
    return missing


def check_inputs(protocol: Protocol, *, default_reason: str | None = None) -> None:
    """Raise one MissingInputsError listing every missing input (nothing when all are there).
    ``default_reason``: why this protocol was chosen when the user named none, said first."""
    missing = missing_inputs(protocol)
    if not missing:
        return
    chosen = f" (chosen because {default_reason})" if default_reason else ""
    count = "an input that is" if len(missing) == 1 else f"{len(missing)} inputs that are"
    source = f" ({protocol.source})" if protocol.source else ""
    raise MissingInputsError(
        f"protocol '{protocol.name}'{chosen} names {count} not there{source}:",
        [item.line() for item in missing],
        hint=f"relative paths are resolved from {Path.cwd()}; put the files there, or set each "
             f"key in a copy of the protocol file (or its flag) to where yours are and pass "
             f"--protocol FILE; nothing is ever downloaded (`gatebench protocols` lists the "
             f"protocols)")

"""Evaluation protocols as data: TOML files loaded into frozen dataclasses.

A protocol pins everything a number depends on (data, models, sampler, detector settings, targets,
gate-health thresholds), so two runs of the same protocol are comparable. Unknown keys and wrong
types are rejected with the file and line, because a misspelt threshold silently falling back to a
default is exactly how a wrong "pass" happens.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from gatebench.errors import ProtocolError
from gatebench.metrics import spec as metric_spec
from gatebench.readers.protocol_values import FLAG_FIELDS, check_flag, value_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The shipped protocols are package data (gatebench/protocols/*.toml, in every wheel), found with
# importlib.resources so an install without -e has them; the checkout's top-level protocols/ is a
# link to this folder (README "Layout").
PROTOCOL_DIR = Path(str(resources.files("gatebench").joinpath("protocols")))
DEFAULT_PROTOCOL = "oracle-coco2014"   # `gatebench run` with no --protocol: the user's evaluation
ASSETS_DIR = Path(__file__).resolve().parent / "world" / "assets"
BUILTIN = "builtin:"       # a path prefix for the shipped shapes-world assets
_PATH_FIELDS = {"data": ("layouts", "image_dir", "coco_captions", "zh_captions"),
                "models": ("base_model", "detector", "clip_model", "inception_weights")}


def resolve_builtin(value: str | None) -> str | None:
    """``builtin:base`` -> the absolute path of a shipped world asset; other paths unchanged."""
    if value is not None and value.startswith(BUILTIN):
        return str(ASSETS_DIR / value[len(BUILTIN):])
    return value


COMPARISONS = (">", ">=", "<", "<=")


@dataclass(frozen=True)
class DataSpec:
    layouts: str | None = None          # layout JSONL, results.jsonl or COCO instances json
    format: Literal["auto", "jsonl", "results", "coco"] = "auto"
    image_dir: str | None = None        # real images (FID reference, detector ceiling)
    coco_captions: str | None = None
    zh_captions: str | None = None      # optional Chinese captions keyed by COCO image id
    caption_language: Literal["zh", "en"] = "zh"
    min_area: float = 0.02              # the user's loader: 0.02 < area < 0.95, w, h > 0.03
    max_area: float = 0.95
    min_side: float = 0.03
    max_boxes: int = 30


@dataclass(frozen=True)
class ModelSpec:
    base_model: str | None = None       # local diffusers-format folder
    detector: str | None = None         # ultralytics .pt
    clip_backend: Literal["open_clip", "transformers", "gatebench-world"] = "transformers"
    clip_model: str | None = None       # local folder / weights file
    clip_arch: str | None = None        # open_clip architecture name
    fid_features: Literal["inception", "clip-image"] = "inception"
    inception_weights: str | None = None  # torch-fidelity weights-inception-2015-12-05 file


# CFG's unconditional half, see generate.py (the names each treatment has and what it does)
UNCOND_TREATMENTS = ("reference", "grounded", "null", "off")
UNCOND_ALIASES = {"drop": "off", "keep": "grounded"}     # the names before gatebench 0.2


@dataclass(frozen=True)
class GenerationSpec:
    gate_scales: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    steps: int = 50
    guidance_scale: float = 5.0
    scheduler: str = "DDIMScheduler"
    grounding_fraction: float = 1.0     # GLIGEN scheduled sampling: boxes for the first beta of steps
    # CFG's unconditional half (generate.UNCOND_TREATMENTS): "reference" = each family's own
    # reference (user: grounded, gligen: null); "drop"/"keep" are the pre-0.2 names of off/grounded
    uncond_boxes: Literal["reference", "grounded", "null", "off", "drop", "keep"] = "reference"
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    device: str = "auto"
    phrase_max_length: int = 32


@dataclass(frozen=True)
class DetectionSpec:
    conf: float = 0.25
    iou: float = 0.7
    imgsz: int = 640
    batch_size: int = 16
    class_map: dict[str, str] = field(default_factory=dict)  # GT name (e.g. Chinese) -> detector label
    # relation_rate (metrics/relations.py, the user's rule): pairs whose centres differ by
    # >= relation_min_sep on the dominant axis; kept with relation_margin; an object counts as
    # detected when its assigned same-class detection has IoU > relation_min_iou (0: any overlap)
    relation_min_sep: float = 0.1
    relation_margin: float = 0.02
    relation_min_iou: float = 0.0
    # zero-shot detectors (a transformers folder as [models] detector; metrics/zeroshot.py):
    # "joined" = the user's verifier ("a. b. c.", one forward), "per_phrase" = MIG's (one
    # query per distinct phrase); the user's thresholds; head_noun: the user's noun shortening
    query: Literal["joined", "per_phrase"] = "joined"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    head_noun: bool = False


@dataclass(frozen=True)
class ScoringSpec:
    match_iou: float = 0.5
    bootstrap: int = 1000
    ci_level: float = 0.95
    garbled_threshold: float = metric_spec.GARBLED_THRESHOLD
    blank_threshold: float = metric_spec.BLANK_THRESHOLD  # near-black / -white / -uniform
    fid_resize: Literal["bilinear", "bicubic", "clean"] = "bilinear"
    # stop when the verdict is decided (gatebench.sequential): anytime-valid confidence
    # sequences at overall error rate decision_alpha, updated after each round of layouts
    until_decided: bool = False
    decision_alpha: float = 0.05
    round_layouts: int = 8


@dataclass(frozen=True)
class GateThresholds:
    """The user's validation guide values (ARCHITECTURE.md, "The user's formats") as defaults."""

    near_zero: float = 0.01             # |raw gate| below this is near zero
    saturated: float = 0.9              # |tanh(gate)| above this is saturated
    healthy_mean_low: float = 0.1
    healthy_mean_high: float = 0.7
    near_zero_share_max: float = 0.5
    saturated_share_max: float = 0.3
    collapse_fraction: float = 0.5      # fell by more than this fraction of its peak magnitude
    collapse_min_peak: float = 0.05     # peaks below this are noise around zero, not a collapse
    falling_fraction: float = 0.1       # a smaller, steady drop over the last points
    not_learning_steps: int = 1000      # still at its init value after this many steps
    not_learning_tol: float = 1e-4
    # below this step a rising gate under the healthy range is where the user's table expects
    # it (0.00 at the start, 0.05-0.1 in the middle): no level warning (gates.level_judged)
    rise_steps: int = 10000
    fail_on_findings: bool = False      # make `run` stop on a gate `fail` finding


@dataclass(frozen=True)
class Target:
    metric: str
    op: Literal[">", ">=", "<", "<="]
    threshold: float
    gate_scales: tuple[float, ...] | None = None   # None: every non-zero scale
    description: str = ""

    def passes(self, value: float) -> bool:
        return {">": value > self.threshold, ">=": value >= self.threshold,
                "<": value < self.threshold, "<=": value <= self.threshold}[self.op]

    def applies_to(self, gate_scale: float) -> bool:
        if self.gate_scales is None:
            return gate_scale != 0.0
        return any(abs(gate_scale - s) < 1e-9 for s in self.gate_scales)

    @property
    def label(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    seed: int = 0
    num_samples: int | None = None
    data: DataSpec = field(default_factory=DataSpec)
    models: ModelSpec = field(default_factory=ModelSpec)
    generation: GenerationSpec = field(default_factory=GenerationSpec)
    detection: DetectionSpec = field(default_factory=DetectionSpec)
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    gates: GateThresholds = field(default_factory=GateThresholds)
    targets: tuple[Target, ...] = ()
    source: str | None = None           # the file it was loaded from

    def replace(self, **sections: Any) -> "Protocol":
        """Override fields, e.g. ``replace(generation={"steps": 10}, seed=3)`` (CLI flags win)."""
        changes: dict[str, Any] = {}
        for key, value in sections.items():
            current = getattr(self, key)
            if dataclasses.is_dataclass(current) and not isinstance(current, type) \
                    and isinstance(value, dict):
                changes[key] = dataclasses.replace(current, **value)
            else:
                changes[key] = value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {"data": DataSpec, "models": ModelSpec, "generation": GenerationSpec,
                              "detection": DetectionSpec, "scoring": ScoringSpec,
                              "gates": GateThresholds}
_TOP_LEVEL = {"name", "description", "seed", "num_samples"}


class _Locator:
    """Finds the line of ``[section] key`` in the raw TOML text (tomllib keeps no positions)."""

    _header = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line_of(self, section: str | None, key: str | None, occurrence: int = 0) -> int | None:
        current: str | None = None
        seen = -1
        section_line = None
        for number, line in enumerate(self.lines, start=1):
            header = self._header.match(line)
            if header:
                current = header.group(1)
                if current == section:
                    seen += 1
                    if seen == occurrence:
                        section_line = number
                continue
            if current == section and seen == occurrence and key is not None:
                if re.match(rf"^\s*{re.escape(key)}\s*=", line):
                    return number
        return section_line


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Coerce a TOML value to ``annotation`` or raise with the expected and found types."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError(errors[0] if errors else f"{where}: unsupported value")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise TypeError(f"{where}: expected one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a table, got {type(value).__name__}")
        return {str(k): _check_type(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation in (str, bool):
        if not isinstance(value, annotation):
            raise TypeError(f"{where}: expected {annotation.__name__}, got "
                            f"{type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {annotation!r}")


def _build(cls: type, raw: dict[str, Any], section: str, path: Path, locate: _Locator,
           occurrence: int = 0) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        line = locate.line_of(section, key, occurrence)
        if key not in known:
            raise ProtocolError(f"unknown key '{key}' in [{section}]; expected one of "
                                f"{', '.join(sorted(known))}", path=path, line=line)
        try:
            values[key] = _check_type(value, hints[key], f"[{section}] {key}")
        except TypeError as exc:
            raise ProtocolError(str(exc), path=path, line=line) from None
        problem = value_problem(section, key, values[key])
        if problem:
            raise ProtocolError(f"[{section}] {key}: {problem}", path=path, line=line)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ProtocolError(f"[{section}]: {exc}", path=path,
                            line=locate.line_of(section, None, occurrence)) from None


def parse_protocol(text: str, path: Path) -> Protocol:
    """Parse and validate protocol TOML text; ``path`` is used for messages only."""
    text = text.removeprefix("\ufeff")      # a UTF-8 BOM (Windows editors), as layouts accept
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"not valid TOML ({exc})", path=path) from None
    locate = _Locator(text)
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    targets: list[Target] = []
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ProtocolError(f"expected [{key}] to be a table, got {type(value).__name__}",
                                    path=path, line=locate.line_of(None, key))
            sections[key] = _build(_SECTIONS[key], value, key, path, locate)
        elif key == "targets":
            if not isinstance(value, list):
                raise ProtocolError("expected [[targets]] entries", path=path)
            for i, entry in enumerate(value):
                target = _build(Target, entry, "targets", path, locate, occurrence=i)
                names = metric_spec.metric_names()
                if target.metric not in names:
                    raise ProtocolError(
                        f"expected a metric in {', '.join(names)}, got '{target.metric}'",
                        path=path, line=locate.line_of("targets", "metric", i))
                targets.append(target)
        elif key in _TOP_LEVEL:
            top[key] = value
        else:
            raise ProtocolError(
                f"unknown key or section '{key}'; expected one of "
                f"{', '.join(sorted(_TOP_LEVEL | set(_SECTIONS) | {'targets'}))}",
                path=path, line=locate.line_of(None, key) or locate.line_of(key, None))
    hints = typing.get_type_hints(Protocol)
    for key, value in top.items():
        try:
            top[key] = _check_type(value, hints[key], key)
        except TypeError as exc:
            raise ProtocolError(str(exc), path=path, line=locate.line_of(None, key)) from None
        problem = value_problem(None, key, top[key])
        if problem:
            raise ProtocolError(f"{key}: {problem}", path=path, line=locate.line_of(None, key))
    if "name" not in top:
        top["name"] = path.stem
    for section, names in _PATH_FIELDS.items():
        if section in sections:
            sections[section] = dataclasses.replace(sections[section], **{
                n: resolve_builtin(getattr(sections[section], n)) for n in names})
    return Protocol(**top, **sections, targets=tuple(targets), source=str(path))


def available_protocols(search: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Protocol names -> files: ``search``, then ./protocols (the working directory's own win),
    then the ones shipped inside the package."""
    found: dict[str, Path] = {}
    for folder in (*search, Path.cwd() / "protocols", PROTOCOL_DIR):
        if folder.is_dir():
            for file in sorted(folder.glob("*.toml")):
                found.setdefault(file.stem, file)
    return found


def with_flags(protocol: Protocol, **flags: Any) -> Protocol:
    """Protocol TOML < CLI flags: each flag given (not None) overrides its field (FLAG_FIELDS),
    range-checked first so a bad value names the flag (exit 2) before any model loads."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None:
            continue
        check_flag(key, value)
        if isinstance(value, str):
            value = resolve_builtin(value)
        section, name = FLAG_FIELDS[key]
        if section is None:
            top[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    return protocol.replace(**sections, **top)


def load_protocol(name_or_path: str | Path) -> Protocol:
    """Load a protocol by file path or by name (``oracle-coco2014``)."""
    path = Path(name_or_path)
    if not path.is_file():
        known = available_protocols()
        if str(name_or_path) not in known:
            raise ProtocolError(f"expected a protocol file or one of "
                                f"{', '.join(sorted(known)) or '(none found)'}, got "
                                f"'{name_or_path}'", hint="see `gatebench protocols`")
        path = known[str(name_or_path)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"cannot read protocol ({exc})", path=path) from None
    return parse_protocol(text, path)

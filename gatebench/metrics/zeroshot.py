"""Zero-shot (open-vocabulary) detectors from a local transformers folder: each image is queried
with its own layout's phrases, and each detection is assigned to the phrase it scores on.

Grounding DINO and MM-Grounding-DINO (one text, scores per text token) run in two query modes:

* ``joined``: the user's verifier, one forward over "a. b. c." (every scorable object's query in
  layout order, repeats kept: the user's text) with their post-processing; cheap, but phrases in
  one prompt can merge or suppress each other.
* ``per_phrase``: MIG's way, one query "a." per distinct phrase; the rows of one image share one
  backbone pass (``SharedBackbone``), so a P-phrase image costs one backbone and P text encoders,
  feature enhancers and decoders.

A detection belongs to the phrase whose token span holds its highest text-token probability
(token offsets, not a substring match on the decoded label, which comes back as fragments such
as "cat.. car."), when that probability exceeds ``text_threshold``; otherwise to no phrase. Its
label stays as the processor decoded it, for the audit trail in samples.jsonl.

OWLv2 / OWL-ViT score every query separately in one forward (the image is encoded once): only
``per_phrase`` applies. OmDet-Turbo is recognised and refused with a clear message.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterator, Mapping, Sequence

from gatebench.errors import ModelFileError, ProtocolError
from gatebench.files import file_sha256
from gatebench.metrics.detect import OFFLINE_ENV, Detection
from gatebench.metrics.images import ImageLike, to_pil_rgb

if TYPE_CHECKING:   # metrics sit below the protocol and the layouts: annotations only
    from gatebench.layouts import LayoutObject
    from gatebench.protocol import DetectionSpec

# transformers' AutoModelForZeroShotObjectDetection model types -> how gatebench queries them
ZERO_SHOT_TYPES: dict[str, str] = {"grounding-dino": "grounding", "mm-grounding-dino": "grounding",
                                   "owlv2": "owl", "owlvit": "owl", "omdet-turbo": "omdet"}
# the user's _short_english_noun: words that are never the head noun
_NOT_NOUNS = frozenset((
    "a an the of in on with and or to for at by from left right top bottom upper lower front "
    "back middle center near far red green blue yellow black white brown pink purple orange "
    "gray grey").split())


def folder_model_type(path: str | Path) -> str | None:
    """The ``model_type`` of a transformers folder's config.json (None: not such a folder)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def is_zero_shot_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and folder_model_type(path) in ZERO_SHOT_TYPES


def head_noun(text: str) -> str | None:
    """The user's head-noun rule: letters only, drop stop/colour/position words, keep the last
    word, drop a plural s (not -ss, words over 3 letters). None where nothing is left (the
    user's code queried the word "unknown" there: gatebench counts the object unscorable)."""
    words = [w for w in "".join(c if c.isalpha() else " " for c in text.lower()).split()
             if w not in _NOT_NOUNS]
    if not words:
        return None
    noun = words[-1]
    if noun.endswith("s") and len(noun) > 3 and not noun.endswith("ss"):
        noun = noun[:-1]
    return noun or None


def query_text(obj: LayoutObject, class_map: Mapping[str, str] | None = None,
               use_head_noun: bool = False) -> str | None:
    """The English text an object is queried with, or None (unscorable: no English query).

    Tried in order: ``class_map[name]``, ``class_map[name_en]``, ``name_en``, the name itself if
    it is ASCII (a Chinese name is never sent: these detectors read English). Lower-cased, a
    period (the joined prompt's separator) read as a space."""
    candidates: list[str | None] = []
    if class_map:
        candidates += [class_map.get(obj.name),
                       class_map.get(obj.name_en) if obj.name_en is not None else None]
    candidates += [obj.name_en, obj.name if obj.name.isascii() else None]
    for candidate in candidates:
        text = " ".join((candidate or "").replace(".", " ").lower().split())
        if text:
            return head_noun(text) if use_head_noun else text
    return None


def folder_sha256(path: Path) -> str:
    """One hash over every file of a model folder (names and contents), in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


class SharedBackbone:
    """While active, a Grounding DINO backbone computes each distinct image once and repeats its
    feature maps, masks and position embeddings for the image's other rows (its phrases)."""

    def __init__(self, model: Any, counts: Sequence[int]) -> None:
        self.backbone = getattr(getattr(model, "model", None), "backbone", None)
        self.counts = list(counts)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        if self.backbone is None or all(c == 1 for c in self.counts):
            yield
            return
        import torch  # noqa: PLC0415

        original = self.backbone.forward
        repeats = torch.tensor(self.counts)
        firsts = torch.cumsum(torch.tensor([0] + self.counts[:-1]), 0)

        def forward(pixel_values: Any, pixel_mask: Any) -> Any:
            out, pos = original(pixel_values[firsts], pixel_mask[firsts])
            grow = repeats.to(pixel_values.device)
            return ([(f.repeat_interleave(grow, 0), m.repeat_interleave(grow, 0)) for f, m in out],
                    [p.repeat_interleave(grow, 0) for p in pos])

        self.backbone.forward = forward
        try:
            yield
        finally:
            del self.backbone.forward       # the instance attribute: the class method again


class ZeroShotDetector:
    """A transformers zero-shot detector queried per image with its phrases (module docstring)."""

    open_vocabulary = True
    share_backbone = True     # False: every row computes its own backbone (the bench's reference)

    def __init__(self, model: Any, processor: Any, spec: DetectionSpec, *, model_type: str,
                 device: str = "cpu", path: Path | None = None) -> None:
        self.model, self.processor, self.spec = model, processor, spec
        self.model_type, self.device, self.path = model_type, device, path
        self.family = ZERO_SHOT_TYPES[model_type]
        if self.family == "owl" and spec.query == "joined":
            raise ProtocolError(f"[detection] query: expected 'per_phrase' for {model_type} (it "
                                f"scores each query separately), got 'joined'",
                                hint="joined is Grounding DINO's one-prompt query")
        self._sha: str | None = None

    @classmethod
    def from_folder(cls, path: str | Path, spec: DetectionSpec,
                    device: str | None = None) -> "ZeroShotDetector":
        """Load ``AutoModelForZeroShotObjectDetection`` + ``AutoProcessor``, local files only."""
        import os  # noqa: PLC0415

        path = Path(path)
        model_type = folder_model_type(path)
        if model_type not in ZERO_SHOT_TYPES:
            raise ModelFileError(f"expected a zero-shot detection model folder (model_type "
                                 f"{', '.join(ZERO_SHOT_TYPES)}), got model_type {model_type!r}",
                                 path=path / "config.json")
        if ZERO_SHOT_TYPES[model_type] == "omdet":
            raise ModelFileError("expected Grounding DINO, MM-Grounding-DINO, OWLv2 or OWL-ViT, "
                                 "got omdet-turbo, which gatebench does not query yet",
                                 path=path / "config.json", hint="use a Grounding DINO folder")
        for key, value in OFFLINE_ENV.items():
            os.environ[key] = value
        import transformers  # noqa: PLC0415

        try:
            processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
            model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(
                path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFileError(f"expected loadable zero-shot detector weights and processor "
                                 f"files, got {exc}", path=path) from None
        dev = "cpu" if device in (None, "auto") else device
        return cls(model.eval().to(dev), processor, spec, model_type=model_type, device=dev,
                   path=path)

    @property
    def labels(self) -> frozenset[str]:
        """Open vocabulary: no fixed label set (each object's query is its class)."""
        return frozenset()

    def identity(self) -> dict[str, Any]:
        """results.json's record: what was run, on which weights, with which query."""
        if self._sha is None and self.path is not None:
            self._sha = folder_sha256(self.path)
        return {"kind": "zero-shot", "backend": "transformers", "model_type": self.model_type,
                "path": str(self.path) if self.path else None, "sha256": self._sha,
                "query": self.spec.query, "box_threshold": self.spec.box_threshold,
                "text_threshold": self.spec.text_threshold if self.family == "grounding" else None,
                "head_noun": self.spec.head_noun}

    def detect_phrases(self, images: Sequence[ImageLike], queries: Sequence[Sequence[str]]
                       ) -> list[list[Detection]]:
        """Every detection the model keeps, per image, each with the query it was assigned to.
        ``queries[i]``: image i's object queries in layout order (repeats allowed)."""
        if len(images) != len(queries):
            raise ValueError(f"expected one query list per image, got {len(queries)} for "
                             f"{len(images)} images")
        groups: list[list[tuple[int, str, list[str]]]] = [
            rows for i, q in enumerate(queries) if (rows := self._rows(i, q))]
        per_image: list[list[Detection]] = [[] for _ in images]
        batch, chunk = max(1, self.spec.batch_size), []
        for k, group in enumerate(groups):   # whole images per forward, <= batch rows (or one)
            chunk += group
            if k + 1 == len(groups) or len(chunk) + len(groups[k + 1]) > batch:
                pils = {i: to_pil_rgb(images[i]) for i in dict.fromkeys(r[0] for r in chunk)}
                for (i, _, _), dets in zip(chunk, self._forward(chunk, pils), strict=True):
                    per_image[i] += dets
                chunk = []
        return per_image

    def _rows(self, index: int, queries: Sequence[str]) -> list[tuple[int, str, list[str]]]:
        if not queries:
            return []
        distinct = list(dict.fromkeys(queries))
        if self.family == "owl":
            return [(index, "", distinct)]
        if self.spec.query == "joined":    # the user's text: every object's query, in order
            return [(index, ". ".join(queries) + ".", distinct)]
        return [(index, f"{q}.", [q]) for q in distinct]

    def _forward(self, rows: Sequence[tuple[int, str, list[str]]], pils: Mapping[int, Any]
                 ) -> list[list[Detection]]:
        import torch  # noqa: PLC0415

        images = [pils[i] for i, _, _ in rows]
        with torch.no_grad():
            if self.family == "owl":
                return self._owl(images, [p for _, _, p in rows])
            texts = [t for _, t, _ in rows]
            counts = [sum(1 for r in rows if r[0] == i) for i in dict.fromkeys(r[0] for r in rows)]
            inputs = self._inputs(images, texts, counts).to(self.device)
            shared = counts if self.share_backbone else [1] * len(rows)
            with SharedBackbone(self.model, shared).active():
                outputs = self.model(**inputs)
        return self._grounding(outputs, inputs.input_ids, texts, [p for _, _, p in rows])

    def _inputs(self, images: Sequence[Any], texts: Sequence[str], counts: Sequence[int]) -> Any:
        """The processor's inputs; an image with several rows (its phrases) is preprocessed
        once and its pixels repeated (what the processor would give, without re-resizing)."""
        if all(c == 1 for c in counts):     # one row per image: the user's call, as it is
            return self.processor(images=list(images), text=list(texts), return_tensors="pt",
                                  padding="longest")
        import torch  # noqa: PLC0415
        from transformers import BatchFeature  # noqa: PLC0415

        firsts = [sum(counts[:k]) for k in range(len(counts))]
        pixels = self.processor.image_processor(images=[images[k] for k in firsts],
                                                return_tensors="pt")
        text = self.processor.tokenizer(list(texts), padding="longest", return_tensors="pt",
                                        return_token_type_ids=True)
        grow = torch.tensor(list(counts))
        return BatchFeature({**text, **{k: v.repeat_interleave(grow, 0)
                                        for k, v in pixels.items()}})

    def _post_process(self, outputs: Any, input_ids: Any) -> list[dict[str, Any]]:
        """The processor's own post-processing, as the user calls it (normalised boxes)."""
        params = inspect.signature(self.processor.post_process_grounded_object_detection).parameters
        box_key = "box_threshold" if "box_threshold" in params else "threshold"
        return self.processor.post_process_grounded_object_detection(
            outputs, input_ids, **{box_key: self.spec.box_threshold},
            text_threshold=self.spec.text_threshold)

    def _grounding(self, outputs: Any, input_ids: Any, texts: Sequence[str],
                   phrases: Sequence[Sequence[str]]) -> list[list[Detection]]:
        import torch  # noqa: PLC0415

        results = self._post_process(outputs, input_ids)
        probs = torch.sigmoid(outputs.logits.float()).cpu()
        spans = [self._spans(text, row_phrases, input_ids[r].tolist())
                 for r, (text, row_phrases) in enumerate(zip(texts, phrases, strict=True))]
        out = []
        for r, result in enumerate(results):
            kept = probs[r][probs[r].max(-1).values > self.spec.box_threshold]
            if len(kept) != len(result["boxes"]):
                raise ModelFileError(f"expected the processor to keep {len(kept)} boxes above "
                                     f"box_threshold, got {len(result['boxes'])}", path=self.path)
            dets = []
            for p, box, score, label in zip(kept, result["boxes"].tolist(),
                                            result["scores"].tolist(), result["text_labels"],
                                            strict=True):
                on = [float(p[s].max()) if s else -1.0 for s in spans[r]]
                best = max(range(len(on)), key=on.__getitem__)
                phrase = phrases[r][best] if on[best] > self.spec.text_threshold else None
                x0, y0, x1, y1 = (float(v) for v in box)
                dets.append(Detection((x0, y0, x1, y1), str(label), float(score), phrase))
            out.append(dets)
        return out

    def _spans(self, text: str, phrases: Sequence[str], ids: Sequence[int]) -> list[list[int]]:
        """Per phrase, the token positions inside its occurrences in ``text`` (from the
        tokenizer's character offsets, checked against the ids the model saw)."""
        enc = self.processor.tokenizer(text, return_offsets_mapping=True)
        n = len(enc["input_ids"])
        if list(ids[:n]) != list(enc["input_ids"]):
            raise ModelFileError("expected the tokenizer to give the processor's token ids for "
                                 f"{text!r}, got others", path=self.path)
        ranges: dict[str, list[tuple[int, int]]] = {p: [] for p in phrases}
        at = 0
        for part in text.rstrip(".").split(". "):   # the texts _rows builds: "a. b. c."
            if part in ranges:
                ranges[part].append((at, at + len(part)))
            at += len(part) + 2
        return [[t for t, (a, b) in enumerate(enc["offset_mapping"])
                 if b > a and any(a >= lo and b <= hi for lo, hi in ranges[p])]
                for p in phrases]

    def _owl(self, images: Sequence[Any], phrases: Sequence[Sequence[str]]
             ) -> list[list[Detection]]:
        """One forward per image over its own queries: in a batch, the padding queries of an
        image with fewer phrases would compete for its boxes (each box keeps its best query)."""
        import torch  # noqa: PLC0415

        out = []
        for image, row_phrases in zip(images, phrases, strict=True):
            inputs = self.processor(text=[list(row_phrases)], images=[image],
                                    return_tensors="pt").to(self.device)
            outputs = self.model(**inputs)
            # OWLv2 pads to a square before resizing, OWL-ViT resizes: boxes are relative to that
            w, h = image.size
            size = (max(w, h),) * 2 if self.model_type == "owlv2" else (h, w)
            result = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.spec.box_threshold, target_sizes=torch.tensor([size]))[0]
            out.append([Detection((b[0] / w, b[1] / h, b[2] / w, b[3] / h), row_phrases[k],
                                  float(s), row_phrases[k])
                        for b, s, k in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                           result["labels"].tolist(), strict=True)])
        return out


def object_queries(objects: Collection[LayoutObject], spec: DetectionSpec) -> list[str | None]:
    """Each object's query text (None: unscorable), as the protocol's [detection] asks."""
    return [query_text(o, spec.class_map, spec.head_noun) for o in objects]


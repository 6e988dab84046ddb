"""Zero-shot detectors from a local transformers folder: queries, token-span assignment, the
user's joined call (parity), per-phrase queries on one shared backbone, and `gatebench score`."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw

from bench.zeroshot_fixtures import make_tiny_grounding_dino
from gatebench.errors import ModelFileError, ProtocolError
from gatebench.layouts import LayoutObject
from gatebench.metrics.zeroshot import ZeroShotDetector, head_noun, is_zero_shot_folder, query_text
from gatebench.protocol import DetectionSpec, parse_protocol
from gatebench.rundir.samples import read_samples_jsonl
from gatebench.score_run import score_elsewhere, write_score_outputs

PHRASES = ["cat", "dog", "red car"]


@pytest.fixture(scope="module")
def gd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_grounding_dino(tmp_path_factory.mktemp("zeroshot") / "grounding-dino")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    img = Image.new("RGB", (80, 64), (200, 210, 220))
    pen = ImageDraw.Draw(img)
    pen.rectangle([5, 10, 35, 50], fill=(220, 30, 30))
    pen.rectangle([45, 5, 75, 40], fill=(30, 30, 220))
    return img


def load(folder: Path, **spec: object) -> ZeroShotDetector:
    return ZeroShotDetector.from_folder(folder, DetectionSpec(**spec), device="cpu")


def test_query_text_class_map_then_name_en_then_ascii_name() -> None:
    cat = LayoutObject(name="猫", bbox=(0, 0, 1, 1), name_en="Cat")
    assert query_text(cat) == "cat"
    assert query_text(cat, {"猫": "tabby cat"}) == "tabby cat"
    assert query_text(cat, {"Cat": "kitten"}) == "kitten"
    assert query_text(LayoutObject(name="red car", bbox=(0, 0, 1, 1))) == "red car"
    assert query_text(LayoutObject(name="独角兽", bbox=(0, 0, 1, 1))) is None   # no English
    assert query_text(LayoutObject(name="a. b", bbox=(0, 0, 1, 1))) == "a b"    # no separator
    assert query_text(LayoutObject(name="x", bbox=(0, 0, 1, 1), name_en="two red cars"),
                      use_head_noun=True) == "car"


def test_head_noun_is_the_users_rule() -> None:
    assert head_noun("the big red sports cars on the left") == "car"
    assert head_noun("glass") == "glass" and head_noun("bus") == "bus"   # -ss, <= 3 letters
    assert head_noun("person, standing") == "standing"     # the last non-stop word, as theirs
    assert head_noun("the red") is None                    # theirs said "unknown": unscorable


def test_folder_recognition_and_refusals(gd_folder: Path, tmp_path: Path) -> None:
    assert is_zero_shot_folder(gd_folder) and not is_zero_shot_folder(tmp_path)
    other = tmp_path / "clip"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ModelFileError, match="zero-shot detection model folder"):
        ZeroShotDetector.from_folder(other, DetectionSpec())
    (other / "config.json").write_text(json.dumps({"model_type": "omdet-turbo"}))
    with pytest.raises(ModelFileError, match="omdet-turbo"):
        ZeroShotDetector.from_folder(other, DetectionSpec())


def test_query_keys_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as exc:
        parse_protocol('name = "x"\n[detection]\nquery = "each"\n', tmp_path / "p.toml")
    assert exc.value.line == 3 and "per_phrase" in str(exc.value)
    with pytest.raises(ProtocolError) as exc:
        parse_protocol('name = "x"\n[detection]\n\nbox_threshold = 1.2\n', tmp_path / "p.toml")
    assert exc.value.line == 4
    spec = parse_protocol('name = "x"\n[detection]\nquery = "per_phrase"\n', tmp_path / "p.toml")
    assert spec.detection.query == "per_phrase" and spec.detection.box_threshold == 0.35
    assert spec.detection.text_threshold == 0.25


def test_joined_mode_equals_the_users_verifier_call(gd_folder: Path, image: Image.Image) -> None:
    """The user's GroundingDinoVerifier: processor(images, text="a. b. c.") -> model ->
    post_process_grounded_object_detection(box 0.35, text 0.25, pixel target sizes), boxes
    divided by the image size. Same boxes to 1e-3 normalised (float32 maths, one batch)."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(gd_folder, local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(gd_folder,
                                                                local_files_only=True).eval()
    inputs = processor(images=image, text="cat. dog. red car.", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    theirs = processor.post_process_grounded_object_detection(
        outputs, inputs.input_ids, threshold=0.35, text_threshold=0.25,
        target_sizes=torch.tensor([image.size[::-1]]))[0]
    w, h = image.size
    their_boxes = (theirs["boxes"] / torch.tensor([w, h, w, h])).tolist()

    ours = load(gd_folder, query="joined").detect_phrases([image], [PHRASES])[0]
    assert len(ours) == len(their_boxes) > 0
    for det, box, score, label in zip(ours, their_boxes, theirs["scores"].tolist(),
                                      theirs["text_labels"], strict=True):
        assert det.bbox == pytest.approx(box, abs=1e-3)
        assert det.score == pytest.approx(score, abs=1e-5) and det.label == label


def test_a_detection_belongs_to_the_phrase_its_top_token_is_in(gd_folder: Path) -> None:
    """Hand-made logits over "cat. dog. red car." ([CLS] cat . dog . red car . [SEP]): the
    phrase is read from token positions, never from the decoded (fragmentary) label."""
    detector = load(gd_folder, query="joined")
    text = "cat. dog. red car."
    ids = detector.processor.tokenizer([text], return_tensors="pt").input_ids
    assert ids.shape[1] == 9
    logits = torch.full((1, 5, 64), -10.0)
    logits[0, 0, [1, 3]] = torch.tensor([0.0, 2.0])    # cat 0.5, dog 0.88 -> dog
    logits[0, 1, [5, 6]] = torch.tensor([1.0, 3.0])    # "red", "car" -> red car
    logits[0, 2, 2] = 3.0                              # only the separator "." -> no phrase
    logits[0, 3, 1] = -0.8                             # cat at 0.31: below box 0.35 -> dropped
    logits[0, 4, [1, 6]] = torch.tensor([-0.7, 0.9])   # top token "car" 0.71 -> red car
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2]] * 5])
    outputs = SimpleNamespace(logits=logits, pred_boxes=boxes)
    dets = detector._grounding(outputs, ids, [text], [PHRASES])[0]
    assert [d.phrase for d in dets] == ["dog", "red car", None, "red car"]
    assert dets[0].label == "cat dog"                  # the decoded label: both tokens > 0.25
    assert dets[0].bbox == pytest.approx((0.2, 0.2, 0.4, 0.4))


def test_per_phrase_shares_one_backbone_pass_per_image(gd_folder: Path,
                                                       image: Image.Image) -> None:
    detector = load(gd_folder, query="per_phrase", batch_size=16)
    calls = []
    encoder = detector.model.model.backbone.conv_encoder
    hook = encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        shared = detector.detect_phrases([image, flipped], [PHRASES + ["cat"], PHRASES[:2]])
    finally:
        hook.remove()
    assert calls == [2]                       # two images, five rows: one backbone pass of 2
    # the same rows one phrase at a time (no sharing) give the same detections
    for img, phrases, got in zip([image, flipped], [PHRASES, PHRASES[:2]], shared, strict=True):
        alone = [d for p in phrases for d in detector.detect_phrases([img], [[p]])[0]]
        assert [(d.phrase, d.label) for d in got] == [(d.phrase, d.label) for d in alone]
        for a, b in zip(got, alone, strict=True):     # batch layout changes the last float bits only
            assert a.bbox == pytest.approx(b.bbox, abs=1e-4)
            assert a.score == pytest.approx(b.score, abs=1e-4)
        assert {d.phrase for d in got} <= set(phrases) | {None}


def test_owl_is_refused_joined(gd_folder: Path) -> None:
    model = SimpleNamespace()
    with pytest.raises(ProtocolError, match="per_phrase"):
        ZeroShotDetector(model, None, DetectionSpec(query="joined"), model_type="owlv2")


def _inputs(root: Path, gd_folder: Path, query: str) -> tuple[Path, Path, Path]:
    """Two images, their layouts (one object with no English name) and a protocol whose
    detector is the zero-shot folder."""
    images = root / "images"
    images.mkdir()
    rows = [{"image_path": "one.png", "caption": "a cat left of a dog",
             "objects": [{"name": "猫", "name_en": "cat", "bbox": [0.05, 0.15, 0.45, 0.8]},
                         {"name": "狗", "name_en": "dog", "bbox": [0.55, 0.1, 0.95, 0.65]},
                         {"name": "独角兽", "bbox": [0.3, 0.7, 0.6, 0.95]}]},
            {"image_path": "two.png", "caption": "a red car",
             "objects": [{"name": "red car", "bbox": [0.1, 0.1, 0.9, 0.9]}]}]
    layouts = root / "layouts.jsonl"
    layouts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                       encoding="utf-8")
    for name, colour in (("one.png", (220, 30, 30)), ("two.png", (30, 200, 30))):
        img = Image.new("RGB", (80, 64), (200, 210, 220))
        ImageDraw.Draw(img).rectangle([8, 8, 60, 50], fill=colour)
        img.save(images / name)
    protocol = root / "p.toml"
    protocol.write_text(f'name = "zs"\n[data]\nmin_area = 0.0\nmin_side = 0.0\n'
                        f'[models]\ndetector = "{gd_folder}"\n'
                        f'[detection]\nquery = "{query}"\n[scoring]\nbootstrap = 20\n',
                        encoding="utf-8")
    return images, layouts, protocol


def _score_folder(root: Path, gd_folder: Path, query: str) -> tuple[dict, Path]:
    images, layouts, protocol = _inputs(root, gd_folder, query)
    document, result, _ = score_elsewhere(images, layouts, str(protocol), None, device="cpu")
    out = root / "out"
    write_score_outputs(document, result, images, out)
    return document, out


@pytest.mark.parametrize("query", ["joined", "per_phrase"])
def test_score_with_a_zero_shot_folder(tmp_path: Path, gd_folder: Path, query: str) -> None:
    document, out = _score_folder(tmp_path, gd_folder, query)
    assert "iou50_rate" in document["metrics"] and "relation_rate" in document["metrics"]
    identity = document["models"]["detector"]
    assert identity["kind"] == "zero-shot" and identity["model_type"] == "grounding-dino"
    assert identity["query"] == query and len(identity["sha256"]) == 64
    assert (identity["box_threshold"], identity["text_threshold"]) == (0.35, 0.25)
    samples = read_samples_jsonl(out / "samples.jsonl").set_index("image")
    one = samples.loc["one.png"]
    # the Chinese-only object is unscorable, counted, not dropped
    assert one["n_boxes"] == 3 and one["n_scorable"] == 2
    assert [b["scorable"] for b in one["boxes"]] == [True, True, False]
    assert "独角兽: no English query" in one["reason"]
    # every detection the detector returned is kept, with its phrase (or null)
    detector = load(gd_folder, query=query)
    with Image.open(tmp_path / "images" / "one.png") as img:
        raw = detector.detect_phrases([img.convert("RGB")], [["cat", "dog"]])[0]
    kept = one["detections"]
    assert len(kept) == len(raw) > 0
    assert {d["phrase"] for d in kept} <= {"cat", "dog", None}
    assert all(set(d) == {"bbox", "label", "score", "phrase"} for d in kept)
    assert {d["phrase"] for d in samples.loc["two.png", "detections"]} <= {"red car", None}


def test_owlv2_queries_each_image_with_its_own_phrases(tmp_path: Path, image: Image.Image) -> None:
    """OWLv2: per image one forward over its queries; boxes as transformers' own call gives
    them (square-padded target size) divided by the image size; the phrase is the query."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from bench.zeroshot_fixtures import make_tiny_owlv2

    folder = make_tiny_owlv2(tmp_path / "owlv2")
    detector = load(folder, query="per_phrase")
    assert detector.identity()["model_type"] == "owlv2"
    assert detector.identity()["text_threshold"] is None
    flipped = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    ours = detector.detect_phrases([image, flipped], [PHRASES, ["bird", "bird"]])
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder, local_files_only=True)
    w, h = image.size
    for img, phrases, got in zip([image, flipped], [PHRASES, ["bird"]], ours, strict=True):
        inputs = processor(text=[phrases], images=[img], return_tensors="pt")
        with torch.no_grad():
            outputs = model.eval()(**inputs)
        theirs = processor.post_process_grounded_object_detection(
            outputs, threshold=0.35, target_sizes=torch.tensor([[max(w, h)] * 2]))[0]
        assert len(got) == len(theirs["boxes"]) > 0
        for det, box, k in zip(got, theirs["boxes"].tolist(), theirs["labels"].tolist(),
                                  strict=True):
            assert det.bbox == pytest.approx((box[0] / w, box[1] / h, box[2] / w, box[3] / h),
                                             abs=1e-5)
            assert det.phrase == det.label == phrases[k]


def test_gatebench_score_command_with_a_grounding_dino_folder(tmp_path: Path,
                                                              gd_folder: Path) -> None:
    from click.testing import CliRunner

    from gatebench.cli import cli

    images, layouts, protocol = _inputs(tmp_path, gd_folder, "joined")
    result = CliRunner().invoke(cli, ["score", "--images", str(images), "--layouts",
                                      str(layouts), "--protocol", str(protocol), "--device",
                                      "cpu", "--json", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output[result.output.index("{"):])
    assert 0.0 <= document["metrics"]["iou50_rate"]["value"] <= 1.0
    assert document["models"]["detector"]["query"] == "joined"
    assert (tmp_path / "out" / "samples.jsonl").is_file()


def test_a_detector_folder_is_an_input_the_run_checks(tmp_path: Path, gd_folder: Path) -> None:
    from gatebench.inputs import missing_inputs
    from gatebench.protocol import Protocol

    def problem(detector: Path) -> list[str]:
        protocol = Protocol(name="x").replace(models={"detector": str(detector)})
        return [m.got for m in missing_inputs(protocol) if m.key == "detector"]

    assert problem(gd_folder) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert problem(empty) == [f"a folder without config.json '{empty}'"]
    assert problem(tmp_path / "nowhere.pt") == [f"a missing path '{tmp_path / 'nowhere.pt'}'"]

"""Property-based hostile input (issue 14): whatever bytes, JSON or TOML values a user hands any
command, it exits 0, 1 or 2 (2 with ONE line naming the problem), never prints a traceback, and
changes nothing but its --out.

Two profiles: the default run draws a few examples per property (well under a minute in all);
``-m slow`` runs the same properties with many more examples.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatebench.cli import cli
from tests.builders import user_state

FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROOT = Path(__file__).resolve().parent.parent
GOLDEN_RUN = ROOT / "tests" / "data" / "golden" / "run"
WORLD_DATA = ROOT / "gatebench" / "world" / "assets" / "data"

# JSON values of every kind, nested a little; big ints and non-finite floats included
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=8)
# TOML values: no null in TOML; tables and arrays of mixed kinds
TOML = st.recursive(
    st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=3),
    max_leaves=6)
# values near the valid ones, so that examples also get past the type checks
NEAR = st.one_of(st.floats(-2.0, 2.0), st.integers(-3, 1200), st.just(0), st.just(1.0),
                 st.lists(st.floats(-0.5, 1200.0), min_size=4, max_size=4),
                 st.sampled_from(["", "dog", "blue square", "中文", "[bold]x[/x]", "auto"]))
ANY = st.one_of(JSON, NEAR)
PATH_PART = st.lists(st.sampled_from(list("ab [] /中文x_-.") + ["[bold]", "[/x]", "运行 1"]),
                     min_size=1, max_size=6).map("".join).filter(lambda s: s.strip("/ .") != "")


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_contract(result) -> None:
    """Exit 0, 1 or 2; exit 2 is one line; never a traceback or an escaped exception."""
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"{type(result.exception).__name__}: {result.exception}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@contextmanager
def workdir() -> Iterator[Path]:
    """A fresh folder per example (hypothesis reuses function-scoped fixtures across examples)."""
    folder = Path(tempfile.mkdtemp(prefix="gatebench-prop-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _both(prop: Callable[..., None], strategy: Any) -> tuple[Callable, Callable]:
    """The same property as a fast default test and a long `-m slow` one."""
    fast = FAST(given(strategy)(prop))
    # 300 examples of a report render (matplotlib, ~1 s each on a shared 2-core machine) outlast
    # the suite's 300 s per-test limit, which is for one hung model, not for 300 examples
    slow = pytest.mark.timeout(1800)(pytest.mark.slow(LONG(given(strategy)(prop))))
    return fast, slow


# --- checkpoint bytes -------------------------------------------------------------------------

def _seed_files(folder: Path) -> dict[str, bytes]:
    from safetensors.torch import save_file

    torch.save(user_state(0.3), folder / "a.pt")
    save_file(user_state(0.3), str(folder / "a.safetensors"),
              metadata={"gatebench": json.dumps({"format": "gatebench-adapter",
                                                 "format_version": 1, "training": {"step": 5}})})
    return {name: (folder / name).read_bytes() for name in ("a.pt", "a.safetensors")}


_SEEDS: dict[str, bytes] = {}


def _seed(name: str) -> bytes:
    if not _SEEDS:
        with workdir() as folder:
            _SEEDS.update(_seed_files(folder))
    return _SEEDS[name]


MUTATION = st.tuples(st.sampled_from(["a.pt", "a.safetensors"]),
                     st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)),
                              min_size=1, max_size=6),
                     st.one_of(st.none(), st.integers(min_value=0)))


def _mutated_checkpoint(case: tuple[str, list[tuple[int, int]], int | None]) -> None:
    name, flips, cut = case
    data = bytearray(_seed(name))
    header = 8 + int.from_bytes(data[:8], "little") if name.endswith(".safetensors") else len(data)
    for position, value in flips:          # mostly inside the header/pickle, where parsing is
        data[position % min(len(data), max(header, 16))] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    with workdir() as folder:
        path = folder / name
        path.write_bytes(bytes(data))
        before = snapshot(folder)
        assert_contract(invoke("gates", path))
        assert_contract(invoke("check-init", "--ckpt", path)) if name.endswith(".pt") else None
        assert snapshot(folder) == before


test_mutated_checkpoint_bytes, test_mutated_checkpoint_bytes_long = _both(
    _mutated_checkpoint, MUTATION)


def _safetensors_header(value: Any) -> None:
    from safetensors.torch import save_file

    with workdir() as folder:
        path = folder / "h.safetensors"
        text = value if isinstance(value, str) else json.dumps(value)
        save_file(user_state(0.3), str(path), metadata={"gatebench": text})
        assert_contract(invoke("gates", path))


test_safetensors_header_values, test_safetensors_header_values_long = _both(
    _safetensors_header, st.one_of(JSON, st.fixed_dictionaries(
        {"format": st.just("gatebench-adapter")},
        optional={"format_version": JSON, "family": JSON, "training": JSON,
                  "adapter_config": JSON, "base_model": JSON}), st.text(max_size=20)))


def _gatebench_header(fields: dict[str, Any]) -> None:
    with workdir() as folder:
        path = folder / "g.pt"
        document = {"format": "gatebench-adapter", "format_version": 1, **fields,
                    "state_dict": user_state(0.3)}
        try:
            torch.save(document, path)
        except (TypeError, ValueError, OverflowError):
            return          # torch cannot write the value: nothing to read back
        assert_contract(invoke("gates", path))


test_gatebench_header_values, test_gatebench_header_values_long = _both(
    _gatebench_header, st.fixed_dictionaries({}, optional={
        "format_version": JSON, "family": st.one_of(JSON, st.sampled_from(["user", "gligen"])),
        "adapter_config": st.one_of(JSON, st.fixed_dictionaries({}, optional={
            k: ANY for k in ("widths", "text_dim", "heads", "num_freqs", "query", "fourier",
                             "text_proj", "null_slot", "box_mask")})), "base_model": JSON,
        "training": st.one_of(JSON, st.fixed_dictionaries({}, optional={
            "step": JSON, "epoch": JSON, "gate_history": JSON, "init_scheme": JSON,
            "gate_init": JSON, "scale_min": JSON, "scale_max": JSON}))}))


_STATE_KEYS = sorted(user_state(0.3))
TENSOR = st.one_of(
    st.builds(lambda shape, fill: torch.full(shape, fill, dtype=torch.float64),
              st.lists(st.integers(0, 4), max_size=3).map(tuple),
              st.floats(allow_nan=True, allow_infinity=True)),
    st.sampled_from([torch.zeros(1, dtype=torch.int64), torch.zeros(2, dtype=torch.bool),
                     torch.zeros(1, dtype=torch.complex64), torch.zeros(3, 3)]), JSON)


def _state_values(case: tuple[list[str], Any]) -> None:
    """Tensors of other shapes, dtypes or no tensor at all under the adapter's own keys."""
    keys, value = case
    state: dict[str, Any] = dict(user_state(0.3))
    for key in keys:
        state[key] = value
    with workdir() as folder:
        path = folder / "s.pt"
        try:
            torch.save(state, path)
        except (TypeError, ValueError, OverflowError):
            return
        assert_contract(invoke("gates", path))
        assert_contract(invoke("check-init", "--ckpt", path))


test_state_dict_values, test_state_dict_values_long = _both(
    _state_values, st.tuples(st.lists(st.sampled_from(_STATE_KEYS), min_size=1, max_size=2),
                             TENSOR))


# --- logs -------------------------------------------------------------------------------------

LOG_FIELDS = ("step", "gate_mean", "gate_std", "gate_min", "gate_max", "loss", "lr")


def _log_rows(rows: list[dict[str, Any]]) -> None:
    with workdir() as folder:
        path = folder / "log.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        assert_contract(invoke("gates", "--log", path, "--json"))


test_log_field_values, test_log_field_values_long = _both(
    _log_rows, st.lists(st.fixed_dictionaries({"step": st.one_of(st.integers(0, 10 ** 6), ANY)},
                                              optional={k: ANY for k in LOG_FIELDS[1:]}),
                        min_size=1, max_size=4))


def _train_log(lines: list[tuple[Any, ...]]) -> None:
    with workdir() as folder:
        path = folder / "train.log"
        path.write_text("".join(f"Step {s}: Gate stats - mean: {m}, std: {d}, min: {a}, max: {b}\n"
                                for s, m, d, a, b in lines), encoding="utf-8")
        assert_contract(invoke("gates", "--log", path))


_NUMBER_TEXT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str),
                         st.integers(-(10 ** 40), 10 ** 40).map(str), st.just("nan"))
test_train_log_values, test_train_log_values_long = _both(
    _train_log, st.lists(st.tuples(st.integers(0, 10 ** 40), _NUMBER_TEXT, _NUMBER_TEXT,
                                   _NUMBER_TEXT, _NUMBER_TEXT), min_size=1, max_size=4))


# --- layouts and detections -------------------------------------------------------------------

_WORLD_ROW = json.loads((WORLD_DATA / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])
LAYOUT_FIELDS = ("image_path", "caption", "caption_en", "objects")
OBJECT_FIELDS = ("name", "name_en", "category_id", "bbox", "bbox_1000")
DETECTION_FIELDS = ("bbox", "label", "score")


def _score(case: tuple[str, str, Any]) -> None:
    """One random JSON value in one field of a layout row, one of its objects, or a detection."""
    where, field, value = case
    row = json.loads(json.dumps(_WORLD_ROW))
    dets = [{"bbox": o["bbox"], "label": o["name_en"], "score": 0.9} for o in _WORLD_ROW["objects"]]
    if where == "row":
        row[LAYOUT_FIELDS[hash(field) % len(LAYOUT_FIELDS)] if field not in LAYOUT_FIELDS
            else field] = value
    elif where == "object":
        row["objects"][0][field if field in OBJECT_FIELDS else "bbox"] = value
    else:
        dets[0][field if field in DETECTION_FIELDS else "bbox"] = value
    with workdir() as folder:
        images = folder / "images"
        images.mkdir()
        shutil.copy(WORLD_DATA / "images" / "test" / _WORLD_ROW["image_path"], images)
        layouts = folder / "layouts.jsonl"
        layouts.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
        detections = folder / "detections.jsonl"
        detections.write_text(json.dumps({"image": _WORLD_ROW["image_path"],
                                          "detections": dets}) + "\n", encoding="utf-8")
        before = snapshot(folder)
        out = folder / "out"
        assert_contract(invoke("score", "--images", images, "--layouts", layouts,
                               "--detections", detections, "--out", out))
        assert {k: v for k, v in snapshot(folder).items() if not k.startswith("out")} == before


test_layout_and_detection_values, test_layout_and_detection_values_long = _both(
    _score, st.tuples(st.sampled_from(["row", "object", "detection"]),
                      st.sampled_from(LAYOUT_FIELDS + OBJECT_FIELDS + DETECTION_FIELDS), ANY))


# --- results.json for report and compare ------------------------------------------------------

_RESULTS = json.loads((GOLDEN_RUN / "results.json").read_text(encoding="utf-8"))


def _set_path(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


_RESULT_PATHS = ([(k,) for k in _RESULTS] + [("results", 0, k) for k in _RESULTS["results"][0]]
                 + [("targets", 0, k) for k in _RESULTS["targets"][0]]
                 + [("protocol", k) for k in _RESULTS["protocol"]]
                 + [("results", 0, "metrics", "iou50_rate", k) for k in ("value", "n")]
                 + [("checkpoints", 0, k) for k in _RESULTS["checkpoints"][0]])


def _results(case: tuple[tuple[Any, ...], Any]) -> None:
    path, value = case
    document = json.loads(json.dumps(_RESULTS))
    _set_path(document, path, value)
    with workdir() as folder:
        run = folder / "run"
        shutil.copytree(GOLDEN_RUN, run)
        (run / "results.json").write_text(json.dumps(document), encoding="utf-8")
        before = snapshot(run)
        assert_contract(invoke("report", run / "results.json", "--out", folder / "out" / "r.md"))
        assert_contract(invoke("compare", GOLDEN_RUN / "results.json", run / "results.json",
                               "--out", folder / "out" / "c.json"))
        assert snapshot(run) == before


test_results_field_values, test_results_field_values_long = _both(
    _results, st.tuples(st.sampled_from(_RESULT_PATHS), ANY))


# --- protocol TOML values ---------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value > 0 else "-inf") \
            if value in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _protocol_fields() -> list[tuple[str | None, str]]:
    import dataclasses

    from gatebench.protocol import _SECTIONS, Target

    fields: list[tuple[str | None, str]] = [(None, k) for k in ("name", "description", "seed",
                                                                "num_samples")]
    for section, cls in _SECTIONS.items():
        fields += [(section, f.name) for f in dataclasses.fields(cls)]
    fields += [("targets", f.name) for f in dataclasses.fields(Target)]
    return fields


def _protocol(case: tuple[tuple[str | None, str], Any]) -> None:
    (section, key), value = case
    line = f"{key} = {_toml_value(value)}"
    if section is None:
        text = f"{line}\n"
    elif section == "targets":
        base = {"metric": '"iou50_rate"', "op": '">"', "threshold": "0.5"}
        base[key] = _toml_value(value)
        text = "[[targets]]\n" + "".join(f"{k} = {v}\n" for k, v in base.items())
    else:
        text = f"[{section}]\n{line}\n"
    with workdir() as folder:
        path = folder / "p.toml"
        path.write_text(text, encoding="utf-8")
        torch.save(user_state(0.3), folder / "a.pt")
        assert_contract(invoke("gates", folder / "a.pt", "--protocol", path))


test_protocol_field_values, test_protocol_field_values_long = _both(
    _protocol, st.tuples(st.sampled_from(_protocol_fields()), st.one_of(
        TOML, st.floats(-2.0, 2.0), st.integers(-3, 100), st.sampled_from(["auto", "cpu", "fp16"]))))


# --- paths with spaces, Chinese and markup ----------------------------------------------------

def _paths(parts: list[str]) -> None:
    with workdir() as folder:
        target = folder.joinpath(*parts)
        target.mkdir(parents=True, exist_ok=True)
        checkpoint = target / "e 1[red].pt"
        torch.save(user_state(0.3), checkpoint)
        assert_contract(invoke("gates", checkpoint))
        missing = invoke("gates", target / "missing [/x].pt")
        assert_contract(missing)
        assert missing.exit_code == 2 and str(target / "missing [/x].pt") in \
            missing.output.replace("\n", "")
        out = target / "out"
        before = {k: v for k, v in snapshot(folder).items()}
        assert_contract(invoke("gates", checkpoint, "--out", out))
        inside = out.resolve()           # parts may hold '..': compare resolved paths
        after = {k: v for k, v in snapshot(folder).items()
                 if not (folder / k).resolve().is_relative_to(inside)}
        assert after == before


test_hostile_paths, test_hostile_paths_long = _both(_paths, st.lists(PATH_PART, min_size=1,
                                                                     max_size=2))

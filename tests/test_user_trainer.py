"""The user's own trainer, followed faithfully (issue 31): steps from its file names, gate
findings that know the training phase, one torn file never sinks a folder, fp16 checkpoints.

Every folder here is written by tests/user_trainer_writer.py exactly as the user's trainer
writes: checkpoint-{N}.pt then spatial_adapter_final.pt, bare fp16 state dicts with no step
inside, gate 0.1 with to_out 0 at init, torch.save in place in 16 chunks.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from gatebench.adapters.user import Grounding
from gatebench.adapters.user_runtime import UserAdapterRuntime
from gatebench.check_init import tiny_unet
from gatebench.checkpoint import TORN, adapter_state, inspect_checkpoint
from gatebench.cli import cli
from gatebench.gates import analyse_paths, beside, checkpoint_steps, level_judged
from gatebench.protocol import GateThresholds
from gatebench.readers.series import Member, file_steps, order_run
from tests.reference_user import install
from tests.user_trainer_writer import FINAL_NAME, UserTrainerWriter

T = GateThresholds()


def _gates(folder: Path) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["gates", str(folder), "--json"])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


def _by_name(doc: dict) -> dict[str, dict]:
    return {Path(c["path"]).name: c for c in doc["checkpoints"]}


def _codes(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"]}


def test_steps_come_from_the_names_and_the_final_file_is_the_last_point(tmp_path: Path) -> None:
    """6 steps, --save-every 2: the final file repeats checkpoint-6's tensors in other bytes."""
    UserTrainerWriter(tmp_path / "run").run(6)
    code, doc = _gates(tmp_path / "run")
    found = _by_name(doc)
    assert [(n, c["step"], c["step_source"]) for n, c in found.items()] == [
        ("checkpoint-2.pt", 2, "file name"), ("checkpoint-4.pt", 4, "file name"),
        ("checkpoint-6.pt", 6, "file name"), (FINAL_NAME, 6, "identical file")]
    assert found[FINAL_NAME]["sha256"] != found["checkpoint-6.pt"]["sha256"]   # bytes differ
    points = doc["trajectory"]["points"]
    assert [p["x"] for p in points] == [2, 4, 6] and [p["step"] for p in points] == [2, 4, 6]
    assert points[-1]["labels"] == ["checkpoint-6.pt", FINAL_NAME] and not points[-1]["final"]
    # gate 0.1 stored as fp16 0.09998: tanh 0.0996 < 0.1, yet a young run where it should be
    assert found["checkpoint-2.pt"]["gates"][0]["raw"] == pytest.approx(0.1002, abs=1e-4)
    assert code == 0 and "near_zero" not in _codes(doc), doc["findings"]


def test_a_final_file_of_unknown_step_stands_after_the_last_checkpoint(tmp_path: Path) -> None:
    """7 steps, --save-every 2: the final file (step 7) repeats nothing; its step is unknown,
    it stands one save interval after checkpoint-6 (never at 6, which it used to share)."""
    UserTrainerWriter(tmp_path / "run").run(7)
    code, doc = _gates(tmp_path / "run")
    assert _by_name(doc)[FINAL_NAME]["step"] is None
    assert _by_name(doc)[FINAL_NAME]["step_source"] is None
    points = doc["trajectory"]["points"]
    assert [(p["x"], p["step"], p["final"]) for p in points] == [
        (2, 2, False), (4, 4, False), (6, 6, False), (8, None, True)]
    assert points[-1]["placed_by"] == "final name"
    assert code == 0 and "near_zero" not in _codes(doc)
    # the same rule as a plain function (what `watch` calls): one row per file
    steps = checkpoint_steps([inspect_checkpoint(p) for p in sorted((tmp_path / "run").iterdir())])
    assert [(Path(s.key).name, s.step, s.place, s.final) for s in steps] == [
        ("checkpoint-2.pt", 2, 2, False), ("checkpoint-4.pt", 4, 4, False),
        ("checkpoint-6.pt", 6, 6, False), (FINAL_NAME, None, 8, True)]


def test_file_steps_never_share_a_place_and_say_where_each_step_came_from() -> None:
    gates = lambda v: (("dim_16", repr(v)),)  # noqa: E731
    members = [Member("r/checkpoint-2000.pt", gates=gates(0.1), tensors="a", mtime=0.0),
               Member("r/step_4000.pt", step=4000, gates=gates(0.2), tensors="b", mtime=0.5),
               Member("r/spatial_adapter_final.pt", gates=gates(0.2), tensors="c", mtime=1.0),
               Member("r/final.pt", gates=gates(0.3), tensors="d", mtime=2.0)]
    rows = file_steps(members)
    assert [(Path(r.key).name, r.step, r.step_source, r.place) for r in rows] == [
        ("checkpoint-2000.pt", 2000, "file name", 2000), ("step_4000.pt", 4000, "recorded", 4000),
        ("spatial_adapter_final.pt", None, None, 6000), ("final.pt", None, None, 8000)]
    # equal gates but other tensors: a different point (the digest decides)
    assert len(order_run(members).points) == 4


def test_a_half_written_file_is_listed_and_the_rest_is_judged(tmp_path: Path) -> None:
    run = tmp_path / "run"
    seen: list[tuple[int, dict]] = []

    def look(i: int, path: Path) -> None:          # `gates` while checkpoint-4 is half written
        if path.name == "checkpoint-4.pt" and i == 7:
            seen.append(_gates(run))

    UserTrainerWriter(run).run(6, on_chunk=look)
    code, doc = seen[0]
    assert code == 1                                  # a file was not read: never exit 0
    assert [Path(c["path"]).name for c in doc["checkpoints"]] == ["checkpoint-2.pt"]
    assert [Path(u["path"]).name for u in doc["unreadable"]] == ["checkpoint-4.pt"]
    assert TORN in doc["unreadable"][0]["message"] and doc["unreadable"][0]["truncated"]
    assert "not a PyTorch checkpoint" not in doc["unreadable"][0]["message"]
    # the folder's own verdict stands (the architecture's one-box note is its only finding)
    assert doc["verdict"] == "warn" and _codes(doc) == {"single_box_unlocalisable"}
    # an interrupted save stays torn: the same, for good; the terminal says it too
    UserTrainerWriter(tmp_path / "dead").run(8, interrupt=("checkpoint-6.pt", 5))
    out = CliRunner().invoke(cli, ["gates", str(tmp_path / "dead"), "--out", str(tmp_path / "o")])
    assert out.exit_code == 1 and TORN in out.output and "checkpoint-4.pt" in out.output
    written = json.loads((tmp_path / "o" / "gates.json").read_text())     # the rest is written
    assert len(written["checkpoints"]) == 2 and len(written["unreadable"]) == 1
    assert f"`checkpoint-6.pt`: expected a PyTorch checkpoint, got a {TORN}" in (
        tmp_path / "o" / "gates.md").read_text()


def test_an_empty_file_just_opened_is_torn_and_a_lone_torn_file_is_bad_input(
        tmp_path: Path) -> None:
    writer = UserTrainerWriter(tmp_path / "run")
    writer.run(4, interrupt=(FINAL_NAME, 0))          # opened with truncation, nothing written
    code, doc = _gates(tmp_path / "run")
    assert code == 1 and "empty file (0 bytes)" in doc["unreadable"][0]["message"]
    assert TORN in doc["unreadable"][0]["message"]
    alone = CliRunner().invoke(cli, ["gates", str(tmp_path / "run" / FINAL_NAME)])
    assert alone.exit_code == 2 and TORN in alone.output   # nothing judged: one line, exit 2
    report, read = analyse_paths([tmp_path / "run"], [], T)
    assert len(report.checkpoints) == 2 and [u.path.name for u in report.unreadable] == [FINAL_NAME]
    assert FINAL_NAME in {p.name for p in read}       # still an input: never written onto


def test_a_rerun_into_the_same_folder_is_read_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    UserTrainerWriter(run, gate_rate=1e-4, seed=0).run(6)
    _, first = _gates(run)
    UserTrainerWriter(run, gate_rate=0.05, seed=1).run(6)     # same names, new content
    code, second = _gates(run)
    before, after = _by_name(first), _by_name(second)
    assert set(before) == set(after)
    assert all(before[n]["sha256"] != after[n]["sha256"] for n in before)
    assert [round(p["gate_mean"], 3) for p in second["trajectory"]["points"]] == [0.2, 0.3, 0.4]
    assert after[FINAL_NAME]["step"] == 6 and code == 0


def _flat_run(folder: Path, gate: float) -> Path:
    UserTrainerWriter(folder, save_every=2000, gate_init=gate, gate_rate=0.0).run(20000)
    return folder


def test_a_long_flat_run_below_range_warns_with_its_value_exact(tmp_path: Path) -> None:
    _, doc = _gates(_flat_run(tmp_path / "low", 0.05))
    levels = [f for f in doc["findings"] if f["code"] == "near_zero"]
    # flat over >= 1000 steps: judged at each point but the first (alone, it shows no trend)
    assert {Path(f["subject"]).name for f in levels} == {
        *(f"checkpoint-{s}.pt" for s in range(4000, 20001, 2000)), FINAL_NAME}
    assert "mean tanh(gate) 0.0499 is below the healthy range 0.1-0.7" in levels[0]["message"]
    _, doc = _gates(_flat_run(tmp_path / "borderline", 0.1))
    message = next(f["message"] for f in doc["findings"] if f["code"] == "near_zero")
    assert "mean tanh(gate) 0.0996 is below" in message and "0.100" not in message


def test_a_young_falling_run_is_judged(tmp_path: Path) -> None:
    UserTrainerWriter(tmp_path / "run", gate_rate=-0.01).run(6)     # 0.08 -> 0.06 -> 0.04
    _, doc = _gates(tmp_path / "run")
    flagged = {Path(f["subject"]).name for f in doc["findings"] if f["code"] == "near_zero"}
    assert flagged == {"checkpoint-4.pt", "checkpoint-6.pt", FINAL_NAME}


def test_level_judged_follows_the_users_table() -> None:
    """0.00 at the start, 0.05-0.1 in the middle, rising: never judged while young; judged once
    the run has had time (rise_steps), or when it stops rising."""
    steps = [0, 2000, 4000, 6000, 8000, 10000, 12000]
    run = order_run([Member(f"r/checkpoint-{s}.pt", gates=(("d", str(s)),)) for s in steps])
    rising = [0.0, 0.01, 0.05, 0.08, 0.1, 0.2, 0.3]
    assert level_judged(run, rising, T) == [False] * 5 + [True] * 2
    flat = [0.05] * 7
    assert level_judged(run, flat, T) == [False] + [True] * 6


def test_user_fp16_checkpoint_runs_as_the_users_inference(tmp_path: Path) -> None:
    """fp16 weights saved exactly as the trainer saves them: gatebench's runtime holds them in
    float32 (as the user's inference casts its adapter) and equals the restated forward on the
    same fp16 values made float32 (bound as the parity tests: 1e-5 of the effect, float32
    reassociation)."""
    widths, text_dim = (32, 64), 16
    writer = UserTrainerWriter(tmp_path, widths=widths, text_dim=text_dim, gate_rate=0.05,
                               out_rate=0.05)
    path = writer.save(tmp_path / "checkpoint-4.pt", writer.state_at(4))
    state = adapter_state(path)
    assert {v.dtype for v in state.values()} == {torch.float16}
    info = inspect_checkpoint(path)
    assert info.format == "user" and info.gates[0].raw == float(torch.tensor(0.3).half())
    torch.manual_seed(0)
    unet = tiny_unet(widths, cross_attention_dim=16).eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"sample": torch.randn(2, 4, 8, 8, generator=g), "timestep": torch.tensor(500),
              "encoder_hidden_states": torch.randn(2, 7, 16, generator=g)}
    boxes = torch.tensor([[[0.1, 0.1, 0.5, 0.6], [0.5, 0.2, 0.9, 0.7]],
                          [[0.3, 0.3, 0.8, 0.8], [0, 0, 0, 0]]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    phrases = torch.randn(2, 2, text_dim, generator=g) * mask[..., None]
    with torch.no_grad():
        base_out = unet(**inputs).sample
        previous = install(unet, state, boxes, phrases, mask, 1.0)
        try:
            reference = unet(**inputs).sample
        finally:
            unet.set_attn_processor(previous)
        base = SimpleNamespace(unet=unet, device=torch.device("cpu"), phrase_dim=text_dim,
                               kind="kolors", phrase_encoding="test")
        runtime = UserAdapterRuntime(info, state, base)
        assert {p.dtype for p in runtime.adapters.parameters()} == {torch.float32}
        try:
            with runtime.grounded(Grounding(boxes, phrases, mask, 1.0)):
                ours = unet(**inputs).sample
        finally:
            runtime.remove()
    effect = (reference - base_out).abs().max()
    assert effect > 1e-2                              # the adapter does something
    assert (ours - reference).abs().max() <= 1e-5 * effect


def test_values_beside_a_limit_show_their_side() -> None:
    assert beside(0.0996447, 0.1) == "0.0996"
    assert beside(0.0999955, 0.1) == "0.099996"           # never "0.1 is below 0.1"
    assert beside(0.70000012, 0.7) == "0.7000001"
    assert beside(0.4996, 0.5, percent=True) == "49.96%"   # never "50% ... (healthy: < 50%)"
    assert beside(0.25, 0.1) == "0.25"


def test_saved_runs_carry_each_step_and_its_source(tmp_path: Path) -> None:
    """results.json's checkpoints are `gates`' own entries: the report reads the same steps."""
    from gatebench.render.sections import REPORT_STYLE, gates_markdown
    from gatebench.rundir.saved import checkpoint_axis

    UserTrainerWriter(tmp_path / "run").run(6)
    report, _ = analyse_paths([tmp_path / "run"], [], T)
    checkpoints = report.to_json()["checkpoints"]
    results = {"results": [{"checkpoint": c["path"]} for c in checkpoints],
               "checkpoints": checkpoints}
    axis, xs = checkpoint_axis(results)
    assert axis == "step" and sorted(xs.values()) == [2.0, 4.0, 6.0, 6.0]
    text = gates_markdown(checkpoints, [], style=REPORT_STYLE)
    assert "step 2 (file name)" in text and "step 6 (identical file)" in text


def test_a_frozen_gate_final_file_joins_only_the_same_tensors(tmp_path: Path) -> None:
    """The gate unchanged in fp16 (to_out still moving): equal gates are not the same file.
    Step 7's final file differs from checkpoint-6 in to_out only: its own place, step unknown."""
    UserTrainerWriter(tmp_path / "seven", gate_rate=0.0).run(7)
    _, doc = _gates(tmp_path / "seven")
    assert [(p["x"], p["step"]) for p in doc["trajectory"]["points"]][-2:] == [(6, 6), (8, None)]
    UserTrainerWriter(tmp_path / "six", gate_rate=0.0).run(6)
    _, doc = _gates(tmp_path / "six")
    assert doc["trajectory"]["points"][-1]["labels"] == ["checkpoint-6.pt", FINAL_NAME]

"""`gatebench watch RUN_DIR`: the loop. Poll the run folder, settle its files (discover.py),
keep them in series order (state.py), evaluate each new point once (evaluate.py), write its
TensorBoard points (tensorboard.py) and the findings (findings.py), and rewrite watch.json after
every change, so an interrupted watch resumes where it stopped.

* ``once``: every complete point present is evaluated; files still settling are waited for up
  to one settle interval plus the unreadable delay, then left ``waiting``. The CI form.
* follow mode: polls every ``poll_s`` seconds until the run's final checkpoint is evaluated
  (a final-named file, or gatebench's trainer saying it is complete), or no file changed for
  ``idle_timeout_s`` (a trainer that died), or a signal (the CLI exits 130 / 143; the same
  command resumes).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from gatebench.errors import CheckpointError, GatebenchError
from gatebench.files import file_sha256
from gatebench.protocol import Protocol
from gatebench.readers.series import is_final_name
from gatebench.render.trajectory import write_trajectory
from gatebench.run import ProgressBar
from gatebench.rundir.outputs import ensure_out_dir, run_lock
from gatebench.rundir.results import exit_code, verdict_of
from gatebench.watch.discover import (
    Observation,
    Settler,
    TrainerStatus,
    checkpoint_files,
    describe,
    read_trainer_status,
)
from gatebench.watch.evaluate import GRID, Evaluator, WatchOptions, headline, run_folder
from gatebench.watch.findings import (
    COMPARE_FILE,
    WatchFinding,
    best_entry,
    best_record,
    control_finding,
    garbled_finding,
    gate_log_findings,
    gate_series_findings,
    loss_finding,
    pick_metric,
    regression_finding,
)
from gatebench.watch.logs import LiveLogs
from gatebench.watch.state import Entry, WatchState, load_state
from gatebench.watch.tensorboard import SUBFOLDER, EvalBoard, default_folder

Events = Callable[[str], None]


@dataclass
class WatchResult:
    state: WatchState
    out: Path
    exit_code: int
    tensorboard: Path
    evaluated_now: int


def settings_of(protocol: Protocol) -> dict[str, Any]:
    """What must not change between sessions of one watch: what pairs two run folders in
    `compare` (protocol file, seed, N, layouts) and what generation the flags change. A newer
    gatebench with more protocol fields is not a change (the file and these values are)."""
    source = Path(protocol.source) if protocol.source else None
    g = protocol.generation
    return {"protocol": protocol.name,
            "protocol_file_sha256": file_sha256(source) if source and source.is_file() else None,
            "seed": protocol.seed, "num_samples": protocol.num_samples,
            "layouts": protocol.data.layouts, "base_model": protocol.models.base_model,
            "gate_scales": sorted({0.0, *map(float, g.gate_scales)}), "steps": g.steps,
            "guidance_scale": g.guidance_scale, "scheduler": g.scheduler,
            "until_decided": protocol.scoring.until_decided}


def watch(run_dir: Path, protocol: Protocol, options: WatchOptions, *,
          on_event: Events = lambda _line: None,
          progress_factory: Callable[[int], ProgressBar] | None = None,
          settler: Settler | None = None, evaluator: Evaluator | None = None,
          sleep: Callable[[float], None] = time.sleep) -> WatchResult:
    """The whole watch as a library call (the CLI parses flags and renders)."""
    if not run_dir.is_dir():
        raise GatebenchError("expected a training run folder, got a path that is not a folder",
                             path=run_dir, hint="give the folder the trainer saves into")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:   # refused before any process group is joined
        raise GatebenchError(
            f"expected one process, got a torchrun world of {world}: the ranks would settle and "
            "pick checkpoints apart and disagree", hint="run `gatebench watch` as one process "
            "(use `gatebench run --ckpt` under torchrun for one checkpoint's layouts sharded)")
    if options.once and not checkpoint_files(run_dir):
        raise GatebenchError("expected checkpoint files (*.pt, *.safetensors, ...) in the run "
                             "folder, found none", path=run_dir,
                             hint="without --once, the watch waits for the first one")
    out = ensure_out_dir(options.out)
    state = load_state(out, run_dir.resolve(), settings_of(protocol))
    board_dir = options.tensorboard or default_folder(run_dir) or out / "tensorboard"
    settler = settler or Settler(options.settle_s, options.unreadable_after_s)
    evaluator = evaluator or Evaluator(protocol, options, progress_factory)
    logs = LiveLogs(run_dir, exclude=(out, board_dir / SUBFOLDER))
    loop = _Loop(run_dir.resolve(), protocol, options, out, state, settler, evaluator,
                 EvalBoard(board_dir), logs, on_event)
    with run_lock(out):
        try:
            loop.run(sleep)
        finally:
            loop.board.close()
            state.save(out)
        # the trajectory report, once per session (matplotlib: seconds), not on a signal
        if state.checkpoints:
            write_trajectory(state.to_dict(), out, loop.logs.latest)
    newest = loop.newest()
    # nothing evaluated (every file torn, unplaced or failing): nothing passed
    return WatchResult(state, out, exit_code(state.verdict) if newest is not None else 1,
                       board_dir / SUBFOLDER, loop.evaluated_now)


class _Loop:
    """One watch session's moving parts (``watch`` builds it)."""

    def __init__(self, run_dir: Path, protocol: Protocol, options: WatchOptions, out: Path,
                 state: WatchState, settler: Settler, evaluator: Evaluator, board: EvalBoard,
                 logs: LiveLogs, on_event: Events) -> None:
        self.run_dir, self.protocol, self.options, self.out = run_dir, protocol, options, out
        self.state, self.settler, self.evaluator = state, settler, evaluator
        self.board, self.logs, self.say = board, logs, on_event
        self.metric, self.scale = pick_metric(protocol)
        self.evaluated_now = 0
        self._decided: tuple[str, str] | None = None   # the point the verdict was read from

    # -- the loop ---------------------------------------------------------------------------
    def run(self, sleep: Callable[[float], None]) -> None:
        # --once waits for files still settling this long (time spent evaluating not counted)
        patience, waited = self.options.settle_s + self.options.unreadable_after_s + 1.0, 0.0
        active, seen_before = time.monotonic(), None
        while True:
            trainer = read_trainer_status(self.run_dir)
            seen = self.settler.observe(checkpoint_files(self.run_dir),
                                        atomic=trainer.atomic_writes)
            ready = self._update(seen)
            self.state.order()
            self.state.save(self.out)
            evaluated = self.evaluated_now
            while todo := self._todo(ready):     # one point at a time, in series order
                self._evaluate(todo[0])
                ready.discard(todo[0].path)
            if self.evaluated_now > evaluated:
                self._series_findings()
            self._log_findings()
            self._decide()
            waiting = [e for e in self.state.checkpoints if e.status == "waiting"]
            if self.options.once:
                if not waiting or waited > patience:
                    return
                nap = min(self.options.poll_s, max(0.05, self.options.settle_s / 4))
                sleep(nap)
                waited += nap
                continue
            if not waiting and self._finished(trainer):
                self.state.complete = True
                self.say("the run's final checkpoint is evaluated; the watch ends")
                return
            files = [(o.path, o.size, o.mtime_ns) for o in seen]
            if files != seen_before or waiting:
                active, seen_before = time.monotonic(), files
            quiet = time.monotonic() - active
            if self.options.idle_timeout_s is not None and quiet > self.options.idle_timeout_s:
                self.say(f"no checkpoint changed for {quiet:.0f} s (--idle-timeout); the watch "
                         "ends")
                return
            sleep(self.options.poll_s)

    def _finished(self, trainer: TrainerStatus) -> bool:
        """gatebench's trainer says when it is complete (a final.pt left by an earlier run is
        no end while a resumed run goes on); without its status file, a final-named file
        (the user's spatial_adapter_final.pt) evaluated is the end."""
        done = [e for e in self.state.checkpoints if e.status in ("evaluated", "same_point")]
        if trainer.present:
            return trainer.complete and (trainer.final is None
                                         or any(e.name == trainer.final for e in done))
        return any(is_final_name(e.name) for e in done)

    # -- files -> entries -------------------------------------------------------------------
    def _update(self, seen: list[Observation]) -> set[str]:
        """Fold one poll into the entries; returns the paths ready to be read."""
        ready: set[str] = set()
        present = {str(o.path) for o in seen}
        for o in seen:
            key = str(o.path)
            e = self.state.entry(key)
            if e is None:
                e = Entry(key)
                self.state.checkpoints.append(e)
            if o.state == "ready" and o.info is not None:
                d = describe(o.info)
                changed = e.sha256 is not None and e.sha256 != d["sha256"]
                if changed and e.results is not None:
                    self._replace(e)
                    e = Entry(key)
                    self.state.checkpoints.append(e)
                elif changed and e.status == "error":      # other content: try it again
                    e.status = "waiting"
                    e.reported = [r for r in e.reported if r != "error"]
                e.sha256, e.step, e.epoch, e.gates = d["sha256"], d["step"], d["epoch"], d["gates"]
                e.tensors = o.tensors
                e.size, e.mtime_ns = o.size, o.mtime_ns
                if e.results is not None and e.status in ("deleted", "evaluated"):
                    e.status, e.reason = "evaluated", None
                elif e.status not in ("evaluated", "same_point", "error"):
                    e.status, e.reason = "waiting", None
                    ready.add(key)
            elif e.status not in ("evaluated", "same_point", "error"):
                e.status, e.reason = o.state, o.reason
                if o.state == "unreadable" and "unreadable" not in e.reported:
                    e.reported.append("unreadable")
                    self.say(f"unreadable: {e.name} ({o.reason}); the watch goes on")
        for e in self.state.checkpoints:
            if e.path not in present and e.status != "deleted":
                e.reason = f"deleted (was {e.status})"
                e.status = "deleted"
                if "deleted" not in e.reported:
                    e.reported.append("deleted")
                    kept = f"; its results stay in {e.run}" if e.run else ""
                    self.say(f"deleted: {e.name} is gone from the run folder{kept}")
        return ready

    def _replace(self, e: Entry) -> None:
        """A file rewritten with other content: the old entry moves to ``replaced``."""
        self.state.checkpoints.remove(e)
        e.reason = (f"replaced by new content on "
                    f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        self.state.replaced.append(e)
        self.say(f"rewritten: {e.name} has new content; it is evaluated again, the earlier "
                 f"result stays in {e.run}")

    def _todo(self, ready: set[str]) -> list[Entry]:
        """One entry per point not yet evaluated, in series order; the other files of an
        evaluated point become ``same_point``."""
        todo: list[Entry] = []
        groups: dict[str, list[Entry]] = {}
        for e in self.state.checkpoints:
            if e.placed_by is None:
                if e.status == "waiting" and e.path in ready:
                    e.status = "unplaced"
                    e.reason = "no place in the run's series (readers/series.py rule 4)"
                continue
            groups.setdefault(e.same_as or e.path, []).append(e)
        for members in groups.values():
            done = next((m for m in members if m.results is not None), None)
            for m in members:
                if m is not done and done is not None and m.status == "waiting" \
                        and m.path in ready:
                    m.status, m.same_as = "same_point", done.path
            if done is None:
                first = next((m for m in members if m.status == "waiting" and m.path in ready),
                             None)
                if first is not None:
                    todo.append(first)
        return todo

    # -- one checkpoint ---------------------------------------------------------------------
    def _evaluate(self, e: Entry) -> None:
        self.say(f"evaluating {e.name} (step {e.tb_step})")
        began = time.perf_counter()
        try:
            results = self.evaluator.evaluate(e)
        except CheckpointError as exc:
            e.status, e.reason = "error", exc.render()
            if "error" not in e.reported:
                e.reported.append("error")
                self.say(f"cannot evaluate {e.name}: {exc.render()}")
            self.state.save(self.out)
            return
        e.run = run_folder(e)
        e.results = f"{e.run}/results.json"
        e.status, e.reason = "evaluated", None
        e.verdict = str(results.get("verdict"))
        e.headline = headline(results)
        stats = (results.get("checkpoints") or [{}])[0].get("stats") or {}
        e.gate_mean = stats.get("mean") if isinstance(stats.get("mean"), (int, float)) else None
        e.evaluated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        e.seconds = round(time.perf_counter() - began, 3)
        self.evaluated_now += 1
        found = self._point_findings(e)
        grid = self.out / e.run / GRID
        self.board.write(e, grid if grid.is_file() else None,
                         [f"{f.code} ({f.severity}): {f.message}" for f in found])
        value = ((e.headline.get(self.scale) or {}).get(self.metric) or {}).get("value")
        shown = f"{self.metric} {value:.3g} at gate scale {self.scale}" if value is not None \
            else f"{self.metric} not computed"
        self.say(f"evaluated {e.name}: verdict {e.verdict}, {shown} ({e.seconds:.1f} s)")
        self.state.save(self.out)

    def _points(self) -> list[Entry]:
        return [e for e in self.state.checkpoints if e.results is not None]

    def newest(self) -> Entry | None:
        points = self._points()
        return points[-1] if points else None

    def _point_findings(self, e: Entry) -> list[WatchFinding]:
        """Findings that come with a checkpoint: garbled images, regression vs the best so
        far, control not growing; the best so far."""
        points = self._points()
        found = garbled_finding(e)
        others = [p for p in points if p is not e]
        pick = best_entry(others, self.metric, self.scale) if others else None
        if pick is not None and points and points[-1] is e:
            found += regression_finding(pick[0], e, self.out)
        found += control_finding(points, self.scale)
        best = best_entry(points, self.metric, self.scale)
        if best is not None:
            record = best_record(best[0], best[1], self.scale, len(points), self.protocol)
            if (self.state.best or {}).get("path") != record["path"]:
                self.say(f"best so far on the probe set: {best[0].name}, {best[1]} "
                         f"{record['value']:.3g} at gate scale {self.scale}")
            self.state.best = record
        return self._raise(found, e)

    def _series_findings(self) -> None:
        """The gate trajectory over the evaluated points (one file per point)."""
        infos = self.settler.infos()
        chosen = [infos[Path(e.path)] for e in self._points() if Path(e.path) in infos]
        self._raise(gate_series_findings(chosen, self.protocol.gates), self.newest())

    def _log_findings(self) -> None:
        """loss_not_falling and the gate findings, from the live logs (re-read when changed)."""
        logs = self.logs.read()
        if logs is None:
            return
        thresholds = self.protocol.gates
        self._raise(loss_finding(logs) + gate_log_findings(logs, thresholds), self.newest())

    def _raise(self, found: list[WatchFinding], at: Entry | None) -> list[WatchFinding]:
        """Each finding once (by code and subject); returns the new ones."""
        known = {(f["code"], f["subject"]) for f in self.state.findings}
        new = [f for f in found if f.key not in known]
        for f in new:
            self.state.findings.append({**f.to_dict(), "checkpoint": at.path if at else None,
                                        "step": at.tb_step if at else None})
            self.say(f"{f.code} ({f.severity}): {f.message}")
        return new

    def _decide(self) -> None:
        """The watch's verdict is the newest point's, by run's own rule (rundir/results.py),
        with the regression against the best so far as its regression part."""
        newest = self.newest()
        if newest is None or newest.results is None:
            self.state.verdict = "pending"
            return
        if (newest.results, newest.status) == self._decided:
            return
        self._decided = (newest.results, newest.status)
        results = json.loads((self.out / newest.results).read_text(encoding="utf-8"))
        compared = self.out / str(newest.run) / COMPARE_FILE
        comparison = json.loads(compared.read_text(encoding="utf-8")) \
            if compared.is_file() else None
        self.state.verdict = verdict_of(results, comparison)["verdict"]

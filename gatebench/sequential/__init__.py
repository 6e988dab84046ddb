"""Stop when the verdict is decided: `gatebench run --until-decided` (issue 23).

``decide.py`` turns a run's per-image records so far into anytime-valid confidence sequences per
(target, checkpoint, gate scale) and says whether the verdict can still change;
``gatebench.metrics.confseq`` does the maths. The rounds themselves are run.py's loop.
"""

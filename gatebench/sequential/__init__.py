"""Stop when the verdict is decided: `gatebench run --until-decided` (issue 23).

``decide.py`` turns a run's per-image records so far into anytime-valid confidence sequences per
(target, checkpoint, gate scale) and says whether the verdict can still change; ``rounds.py``
generates and scores round by round (with ``--baseline``, the regression gate's rows decided
beside the targets). The maths: ``gatebench.metrics.confseq`` (the betting confidence sequence)
and ``gatebench.metrics.paired_sequence`` (the seeded order, paired differences; compare uses it).
"""

"""`gatebench watch`: evaluate a training run's checkpoints as they land (README: "Watching a
training run"). discover.py: which files are complete (the settle rule); state.py: watch.json;
evaluate.py: one checkpoint through `run`'s pipeline with the models loaded once;
trend.py / findings.py: what the trajectory says; logs.py: the live training logs;
tensorboard.py: eval/ points beside training; follow.py: the loop (`--once` and follow mode).
The trajectory report is a renderer (render/trajectory.py)."""

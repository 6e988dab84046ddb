"""The run folder: results.json and samples.jsonl: schema, write, read (ARCHITECTURE.md);
compare.json is written by gatebench/compare.py, its verdict part read by rundir/results.py."""

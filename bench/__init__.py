"""bench/: benchmark scripts and the modules they share (``from bench.fixtures import ...``)."""

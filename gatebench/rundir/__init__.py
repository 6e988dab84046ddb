"""The run folder: results.json, samples.jsonl, compare.json: schema, write, read (ARCHITECTURE.md)."""

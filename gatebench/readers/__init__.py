"""Input boundaries: each turns a file kind into typed data or one clear error (ARCHITECTURE.md)."""

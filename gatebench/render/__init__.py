"""Every output format: Markdown, LaTeX, HTML, terminal tables, plots (ARCHITECTURE.md)."""

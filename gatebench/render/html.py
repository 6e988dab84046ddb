"""One self-contained HTML file from the Markdown report: images inlined as base64.

Why one file: a CI artifact or an e-mail attachment must open anywhere, without the PNGs beside it.
Uses the ``markdown`` package (installed with tensorboard, a gatebench dependency).
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from gatebench.errors import GatebenchError

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em}th{background:#f3f3f3}
img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}blockquote{color:#8a5a00}"""
_IMG = re.compile(r'<img alt="([^"]*)" src="([^"]+)"')


def _inline(match: re.Match[str], folder: Path) -> str:
    alt, src = match.group(1), match.group(2)
    path = folder / src
    if src.startswith(("data:", "http:", "https:")) or not path.is_file():
        return match.group(0)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}"'


def markdown_to_html(text: str, folder: Path, *, title: str = "gatebench report") -> str:
    try:
        import markdown  # noqa: PLC0415
    except ImportError:  # pragma: no cover - installed with tensorboard
        raise GatebenchError("expected the 'markdown' package for --format html, got none",
                             hint="pip install markdown, or use --format md") from None
    body = markdown.markdown(text, extensions=["tables", "fenced_code", "md_in_html"])
    body = _IMG.sub(lambda m: _inline(m, folder), body)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")

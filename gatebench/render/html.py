"""One self-contained HTML file from the Markdown report: images inlined as base64.

Why one file: a CI artifact or an e-mail attachment must open anywhere, without the PNGs beside it.
Uses the ``markdown`` package (installed with tensorboard, a gatebench dependency).

Text from data reaches the Markdown already escaped (``render/escape.py``); the converted HTML
then passes an allowlist (``sanitise``): tags the report's own Markdown makes, attributes it
uses, image sources that are files or inlined PNGs. Anything else is shown as text, so a missed
escape still cannot put a live element or an ``on*`` handler into the file people open.
"""
from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser
from pathlib import Path

from gatebench.errors import GatebenchError
from gatebench.render.escape import html_text

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em}th{background:#f3f3f3}
img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}blockquote{color:#8a5a00}"""
_IMG = re.compile(r'<img alt="([^"]*)" src="([^"]+)"')
EXTENSIONS = ("tables", "fenced_code", "md_in_html")     # md_in_html: the report's <details>
ALLOWED = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "br", "hr", "strong", "em", "code", "pre",
           "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "img",
           "details", "summary"}
_VOID = {"br", "hr", "img"}
_ALIGN = re.compile(r"text-align: (left|right|center);?")
_SAFE_SRC = re.compile(r"(data:image/png;base64,[A-Za-z0-9+/=]*|[\w.-]+\.png)")


def _allowed_attr(tag: str, name: str, value: str | None) -> bool:
    if tag == "img" and name == "alt":
        return True
    if tag == "img" and name == "src":
        return value is not None and _SAFE_SRC.fullmatch(value) is not None
    return tag in ("th", "td") and name in ("align", "style") and value is not None and \
        (value in ("left", "right", "center") or _ALIGN.fullmatch(value) is not None)


class _Sanitiser(HTMLParser):
    """Re-emits allowed tags with allowed attributes; everything else as escaped text. Inside
    ``<code>``, the ``\\|`` a Markdown table needs for a pipe becomes ``|`` (GFM does the same;
    Python-Markdown leaves the backslash)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.code = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED:
            self.out.append(html.escape(self.get_starttag_text() or f"<{tag}>"))
            return
        kept = "".join(f' {name}="{html.escape(value or "", quote=True)}"'
                       for name, value in attrs if _allowed_attr(tag, name, value))
        self.out.append(f"<{tag}{kept}{' /' if tag in _VOID else ''}>")
        self.code += tag == "code"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in ALLOWED and tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID and tag in ALLOWED:
            return
        self.out.append(f"</{tag}>" if tag in ALLOWED else html.escape(f"</{tag}>"))
        if tag == "code" and self.code:
            self.code -= 1

    def handle_data(self, data: str) -> None:
        text = html.escape(data, quote=False)
        self.out.append(text.replace("\\|", "|") if self.code else text)

    def handle_comment(self, data: str) -> None:       # no comment survives (IE-style tricks)
        return

    def handle_decl(self, decl: str) -> None:
        return

    def handle_pi(self, data: str) -> None:
        return

    def unknown_decl(self, data: str) -> None:
        return


def sanitise(body: str) -> str:
    """``body`` with only ALLOWED tags and attributes; what else was there shown as text."""
    parser = _Sanitiser()
    parser.feed(body)
    parser.close()
    return "".join(parser.out)


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
    body = markdown.markdown(text, extensions=list(EXTENSIONS))
    body = _IMG.sub(lambda m: _inline(m, folder), sanitise(body))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html_text(title)}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")

"""Text from outside, made safe once per output format: every renderer calls these, none escapes
by hand.

"Outside" is whatever a user, a shared layouts file, a detector or a file name can set: captions,
object names, detector labels, checkpoint / image / detections paths, protocol names and
descriptions, log contents, and findings that quote them. A report is opened by people who did
not write its inputs (a CI artifact, a PR comment, a shared HTML file), so such text must arrive
as text: no live HTML, no broken table, no LaTeX command, no terminal escape, no crash.

``clean`` is the part every format shares: line breaks and tabs become spaces (a row stays one
row), other control characters (ANSI escapes, NUL), bidirectional overrides / embeddings /
isolates (text that displays in another order than it reads) and lone surrogates (a JSON
``"\\ud800"`` would fail the UTF-8 write) become U+FFFD, so something visibly was there. The
bidi marks (LRM, RLM, ALM) stay: a Hebrew or Arabic caption may need them, and they reorder no
span.
"""
from __future__ import annotations

import html
import re
import unicodedata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont, ImageFont

REPLACEMENT = "\ufffd"
_SPACES = {"\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"}
_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _clean_char(ch: str) -> str:
    if ch in _SPACES:
        return " "
    if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs"):
        return REPLACEMENT
    return ch


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(text: object, *, keep_newlines: bool = False) -> str:
    """``str(text)`` on one line (``keep_newlines``: its "\\n" kept), without control
    characters, bidi overrides or surrogates."""
    if keep_newlines:
        return "\n".join(clean(line) for line in str(text).split("\n"))
    return _UNSAFE.sub(lambda m: _clean_char(m.group()), str(text))


# -- Markdown (report.md; also the source of the HTML report) -------------------------------

# Both CommonMark and Python-Markdown (the HTML step) honour a backslash before these; "<" is not
# backslash-escapable in Python-Markdown, so where it could open a tag, a comment or an autolink
# (a letter, "/", "!" or "?" after it) it becomes "&lt;", as "&" does where it would start an
# entity: read as text by both. "< 0.2" stays as written. "|" escaped is how a GFM table cell
# holds a pipe; "(", ")", "!" cannot start a link or an image once "[" and "]" are escaped; ">"
# starts a blockquote only at the start (_MD_LEADING), and closes no tag once "<" cannot open one.
_MD_ESCAPED = {"\\": "\\\\", "`": "\\`", "*": "\\*", "[": "\\[", "]": "\\]", "|": "\\|",
               "<": "&lt;", "&": "&amp;"}
_MD_SPECIAL = re.compile(r"[\\`*\[\]|]|<(?=[A-Za-z/!?])|&(?=#?\w+;)|_+")
_MD_LEADING = re.compile(r"^(\s*(?:\d+)?)(#|>|[+-](?=[\s+-]|$)|(?<=\d)[.)](?=\s|$))")


def _md_sub(match: re.Match[str]) -> str:
    token = match.group()
    if token[0] == "_":     # intraword underscores (layout_1__s2.png) never emphasise: kept
        text, start, end = match.string, match.start(), match.end()
        inside = 0 < start and end < len(text) and text[start - 1].isalnum() \
            and text[end].isalnum()
        return token if inside else "\\_" * len(token)
    return _MD_ESCAPED[token]


def md_text(text: object) -> str:
    """Inline Markdown text (prose, a table cell, image alt text): shown as written.

    Escapes ``\\ ` * [ ] |``, ``_`` outside a word, ``<`` and ``&`` where they would start a tag
    or an entity, and markup that only counts at the start (``#``, ``>``, ``-``, ``+``, ``1.``)."""
    out = _MD_SPECIAL.sub(_md_sub, clean(text))
    return _MD_LEADING.sub(lambda m: m.group(1) + "\\" + m.group(2), out, count=1)


def md_code(text: object) -> str:
    """A path or a name as a Markdown code span nothing can break out of: the fence is one
    backtick longer than the longest backtick run inside (CommonMark), padded with spaces when
    the text starts or ends with a backtick; "|" is written "\\|" so a table row keeps its
    columns (GFM reads it as "|" inside a span; the HTML step does the same). Empty: nothing."""
    body = clean(text)
    if not body.strip():
        return ""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if body[0] in "` " or body[-1] in "` " else ""
    return f"{fence}{pad}{body.replace('|', chr(92) + '|')}{pad}{fence}"


# -- HTML, LaTeX, terminal, PNG, matplotlib ----------------------------------------------------

def html_text(text: object) -> str:
    """Text or an attribute value in HTML: ``& < > " '`` as entities."""
    return html.escape(clean(text), quote=True)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_text(text: object) -> str:
    """LaTeX text mode: the ten special characters as text, so ``\\input{/etc/hostname}``
    prints as written and no brace from data closes one of the report's own groups."""
    return "".join(_TEX.get(ch, ch) for ch in clean(text))


def rich_text(text: object) -> str:
    """Terminal (rich): markup such as ``[bold]`` shown literally, no escape sequences ("\\n"
    kept: an error block lists one missing input a line; "\\r" cannot overwrite a line)."""
    from rich.markup import escape  # noqa: PLC0415

    return escape(clean(text, keep_newlines=True))


def plot_text(text: object) -> str:
    """A matplotlib label: "$" would start mathtext (and bad TeX in it fails the whole plot)."""
    return clean(text).replace("$", r"\$")


def png_text(text: object, font: ImageFont | FreeTypeFont, max_px: int | None = None, max_chars: int = 200) -> str:
    """Text PIL can draw with ``font`` in at most ``max_px`` pixels: cleaned, cut with an
    ellipsis, and for PIL's bitmap fallback font (no FreeType: Latin-1 only) every other
    character as "?" instead of a UnicodeEncodeError."""
    from PIL import ImageFont  # noqa: PLC0415

    out = clean(text)
    bitmap = isinstance(font, ImageFont.ImageFont)
    ellipsis = "..." if bitmap else "\u2026"
    if bitmap:
        out = out.encode("latin-1", "replace").decode("latin-1")
    if len(out) > max_chars:
        out = out[:max_chars - len(ellipsis)] + ellipsis
    if max_px is not None and font.getlength(out) > max_px:
        while out and font.getlength(out + ellipsis) > max_px:
            out = out[:-1]
        out = out + ellipsis if out else ""
    return out

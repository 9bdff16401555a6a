"""HTML pieces of the report page: one self-contained ``index.html`` (inline CSS, no script, no
external resource) whose images are relative links to PNGs beside it, so the folder opens from
disk and from any object store that serves files. Every text is escaped; every image has alt text."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.0em; margin-top: 1.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
figure { display: inline-block; margin: 0 6px 8px 0; vertical-align: top; text-align: center; }
figcaption { font-size: 0.75em; max-width: 240px; }
.star figcaption { font-weight: bold; color: #0a7fa0; }
.row { margin-bottom: 0.6em; border-bottom: 1px dotted #ddd; }
.note { color: #666; font-size: 0.85em; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.75em; overflow-x: auto; max-height: 30em; }
nav a { margin-right: 1em; }
img { max-width: 100%; height: auto; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def img(src: str, alt: str, caption: str | None = None, star: bool = False, width: int | None = None) -> str:
    """A figure with its image (``src`` relative to index.html), alt text and an optional caption."""
    size = f' width="{int(width)}"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    cls = ' class="star"' if star else ""
    return f'<figure{cls}><img src="{esc(src)}" alt="{esc(alt)}"{size} loading="eager">{cap}</figure>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def details(summary: str, content: Any) -> str:
    """A collapsed block of pretty-printed JSON (the resolved config)."""
    text = json.dumps(content, indent=1, sort_keys=True, default=str)
    return f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>"


def page(title: str, nav: Sequence[tuple[str, str]], sections: Sequence[str]) -> str:
    """The whole document: title, a table of contents (anchor, label) and the sections."""
    links = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><nav>{links}</nav>{''.join(sections)}</body></html>\n"
    )


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for captions and tables: floats rounded, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def area(value: Any) -> str:
    """An area (a fraction of the image) as the report writes every area: a percentage, ``5%``."""
    if value is None:
        return "-"
    return f"{100 * float(value):.3g}%"

"""Self-contained HTML pages: jinja2 templates with autoescaping, every image inlined as a base64 data URI.

A page written here opens offline from any folder: no file, script, style sheet or font is fetched from elsewhere.
Every value put into a template (sample names, cell types, paths) is HTML-escaped by jinja2's autoescape.
"""

from __future__ import annotations

import base64
import datetime
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tissuemap import __version__

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Image:
    """A figure of a page: its title, the image as a data URI and a caption."""

    title: str
    uri: str
    caption: str = ""


@dataclass(frozen=True)
class Table:
    """A table of a page: column names and rows of already formatted cells."""

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    # cells of these columns are links: (href, text) pairs instead of strings; href None: text only
    link_columns: frozenset[int] = field(default_factory=frozenset)


def png_data_uri(png: bytes) -> str:
    """A ``data:`` URI holding PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def file_data_uri(path: str | os.PathLike) -> str:
    """A ``data:`` URI holding an image file (PNG, JPEG or SVG, by its suffix)."""
    path = Path(path)
    mime = IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: not an image type a page can embed ({', '.join(IMAGE_TYPES)})")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image_from_file(path: str | os.PathLike, title: str, caption: str = "") -> Image:
    """An :class:`Image` embedding the file at ``path``."""
    return Image(title=title, uri=file_data_uri(path), caption=caption)


def format_number(value, digits: int = 3) -> str:
    """A number for a table: integers with thousands separators, other values with ``digits`` significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}g}" if abs(value) < 10 ** digits else f"{value:,.0f}"
    return str(value)


def format_percent(fraction: float) -> str:
    """A fraction as a percentage with one decimal."""
    return f"{100 * fraction:.1f}%"


def settings_rows(settings: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings (a step's options) as (dotted key, formatted value) rows of a key-value table."""
    rows = []
    for key, value in settings.items():
        # settings read back from an h5ad are numpy arrays and scalars
        value = value.tolist() if hasattr(value, "tolist") else value
        if isinstance(value, dict):
            rows += settings_rows(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            rows.append((f"{prefix}{key}", ", ".join(map(str, value)) or "–"))
        else:
            rows.append((f"{prefix}{key}", format_number(value) if isinstance(value, (int, float)) else str(value)))
    return rows


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("tissuemap.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def converged_text(converged: bool | None) -> str:
    """A training history's ``converged`` in words (a history written before the judgement existed has none)."""
    return {True: "yes", False: "no: train longer", None: "not judged"}[converged]


def render_page(template: str, path: str | os.PathLike, title: str, **context) -> Path:
    """Render the template ``template`` (in ``tissuemap/report/templates``) into the file ``path``.

    Parameters
    ----------
    template
        Template file name, e.g. ``"sample.html.j2"``.
    path
        The HTML file to write (UTF-8).
    title
        The page title.
    context
        Values the template reads; strings are escaped when inserted.
    """
    html = _environment().get_template(template).render(
        title=title,
        version=__version__,
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        **context,
    )
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path

"""A labelled comparison grid of a sweep: one axis the jobs (after the input images of edits),
the other the prompts.

The layout (every cell's box and source file) is stored in the PNG itself, as JSON in a
`flux_batch_grid` text chunk, so tools can map a click or a crop back to its image.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from flux_batch.plan.inputs import to_rgb

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MISSING = (225, 225, 225)
MARGIN, GAP, PAD = 12, 6, 4
FONT_SIZE = 14
MAX_LABEL_LINES = 4
TRUETYPE_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian's fonts-dejavu-core
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
)


def find_font(size: int = FONT_SIZE):
    """A TrueType font when one is installed (system DejaVu, else matplotlib's bundled copy),
    else Pillow's default."""
    candidates = list(TRUETYPE_CANDIDATES)
    spec = importlib.util.find_spec("matplotlib")
    if spec and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    for path in candidates:
        if Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


@dataclass
class Axis:
    """Labels of one axis: one list of text lines per row or column."""

    labels: list[list[str]]


def text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def wrap(font, text: str, width: int, max_lines: int = MAX_LABEL_LINES) -> list[str]:
    """Greedy word wrap to `width` pixels; the last line ends in '…' when text is left over."""
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if text_width(font, candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    lines = [fit(font, ln, width) for ln in lines] or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = fit(font, lines[-1] + " …", width, force_ellipsis=True)
    return lines


def fit(font, text: str, width: int, force_ellipsis: bool = False) -> str:
    """`text` cut to `width` pixels, with '…' where it was cut."""
    if text_width(font, text) <= width and not force_ellipsis:
        return text
    text = text.removesuffix(" …")
    while text and text_width(font, text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def label_lines(font, parts: list[str], width: int) -> list[str]:
    """A label's parts, each wrapped to `width`, at most MAX_LABEL_LINES lines in all."""
    return [line for part in parts for line in wrap(font, part, width)][:MAX_LABEL_LINES]


def thumbnail_size(size: tuple[int, int], cell: int) -> tuple[int, int]:
    """The image scaled (up or down) to fit a cell×cell square, aspect kept."""
    w, h = size
    scale = min(cell / w, cell / h)
    return max(1, round(w * scale)), max(1, round(h * scale))


@dataclass
class Layout:
    """Where everything goes: label lines, column width, the origin of the image area."""

    col_lines: list[list[str]]
    row_lines: list[list[str]]
    col_w: int
    line_h: int
    title_h: int
    left: int
    top: int
    size: tuple[int, int]

    def cell_origin(self, r: int, c: int, cell: int) -> tuple[int, int]:
        x = self.left + c * (self.col_w + GAP) + (self.col_w - cell) // 2
        return x, self.top + r * (cell + GAP)


def plan(font, rows: Axis, cols: Axis, cell: int, title: str) -> Layout:
    line_h = int(font.getbbox("Ag")[3]) + 3
    # a column is wide enough for its longest word (`guidance=2.5`), up to three cells
    widest_word = max(text_width(font, w) for lab in cols.labels for part in lab for w in part.split())
    col_w = max(cell, min(widest_word + PAD, 3 * cell))
    col_lines = [label_lines(font, lab, col_w) for lab in cols.labels]
    widest = max(text_width(font, part) for lab in rows.labels for part in lab)
    label_w = min(max(widest + PAD, 60), 260)
    row_lines = [label_lines(font, lab, label_w) for lab in rows.labels]
    title_h = line_h + GAP if title else 0
    header_h = max(len(lines) for lines in col_lines) * line_h + PAD
    left, top = MARGIN + label_w + GAP, MARGIN + title_h + header_h + GAP
    n_rows, n_cols = len(rows.labels), len(cols.labels)
    size = (
        left + n_cols * col_w + (n_cols - 1) * GAP + MARGIN,
        top + n_rows * cell + (n_rows - 1) * GAP + MARGIN,
    )
    return Layout(col_lines, row_lines, col_w, line_h, title_h, left, top, size)


def draw(
    cells: list[list[Path | None]], rows: Axis, cols: Axis, cell: int, out: Path, title: str = "", font=None
) -> Image.Image:
    """Draw cells[r][c] (image files, None for a missing one) under labels; save a PNG."""
    font = font or find_font()
    layout = plan(font, rows, cols, cell, title)
    grid = Image.new("RGB", layout.size, BACKGROUND)
    _labels(ImageDraw.Draw(grid), font, layout, title, cell)
    boxes = [
        {"row": r, "col": c} | _paste(grid, font, path, layout.cell_origin(r, c, cell), cell)
        for r, row in enumerate(cells)
        for c, path in enumerate(row)
    ]
    info = PngInfo()
    info.add_text(
        "flux_batch_grid",
        json.dumps(
            {
                "cell": cell,
                "rows": rows.labels,
                "cols": cols.labels,
                "header_bottom": layout.top - GAP,
                "cells": [box for box in boxes if "box" in box],
            },
            ensure_ascii=False,
        ),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, pnginfo=info, optimize=True)
    return grid


def _labels(pen: ImageDraw.ImageDraw, font, layout: Layout, title: str, cell: int) -> None:
    if title:
        pen.text((MARGIN, MARGIN), fit(font, title, layout.size[0] - 2 * MARGIN), fill=INK, font=font)
    for c, lines in enumerate(layout.col_lines):
        x = layout.left + c * (layout.col_w + GAP)
        for i, line in enumerate(lines):  # centred over the image
            at = x + (layout.col_w - text_width(font, line)) // 2
            pen.text((at, MARGIN + layout.title_h + i * layout.line_h), line, fill=INK, font=font)
    for r, lines in enumerate(layout.row_lines):
        _, y = layout.cell_origin(r, 0, cell)
        for i, line in enumerate(lines):
            pen.text((MARGIN, y + i * layout.line_h), line, fill=INK, font=font)


def _paste(grid: Image.Image, font, path: Path | None, origin: tuple[int, int], cell: int) -> dict:
    """One cell: the image scaled to fit, centred; a grey box when it is missing."""
    x, y = origin
    if path is None:
        pen = ImageDraw.Draw(grid)
        pen.rectangle((x, y, x + cell - 1, y + cell - 1), fill=MISSING)
        pen.text((x + PAD, y + PAD), "missing", fill=INK, font=font)
        return {}
    with Image.open(path) as source:
        image = to_rgb(source)  # an input as the model saw it: oriented, alpha over white
    size = thumbnail_size(image.size, cell)
    at = (x + (cell - size[0]) // 2, y + (cell - size[1]) // 2)
    grid.paste(image.resize(size, Image.Resampling.LANCZOS), at)
    return {"box": [*at, *size], "file": str(path)}

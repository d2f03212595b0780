"""A static HTML gallery of a sweep: opens from disk in any browser, no server.

Images are linked by paths relative to the page, so the sweep folder can be moved or served
as it is. The page shows the grid (prompts × jobs, after the input images of edits) and every
manifest record in a table.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from flux_batch.record import FIELDS
from flux_batch.store.input_files import input_name
from flux_batch.sweep.results import EXTRACTED, SweepResults

STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; font-size: 13px; }
th { background: #f2f2f2; }
td.cell img { display: block; width: 192px; height: auto; image-rendering: auto; }
td.prompt { max-width: 22em; }
.missing { width: 192px; height: 192px; background: #e6e6e6; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _href(target: Path, page_dir: Path) -> str:
    return _e(Path(os.path.relpath(target, page_dir)).as_posix())


def write(results: SweepResults, out: Path, grid_png: Path | None = None) -> Path:
    """Write the gallery page to `out` (index.html); returns its path."""
    page_dir = out.parent
    jobs = results.jobs
    parts = [
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{_e(results.dir.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(results.dir.name)}</h1>",
    ]
    if grid_png is not None:
        parts.append(f"<p><a href='{_href(grid_png, page_dir)}'>comparison grid (PNG)</a></p>")
    extract_to = results.dir / EXTRACTED
    inputs = [results.input_paths(key, extract_to) for key in results.items]
    shown = max(map(len, inputs), default=0)  # input columns, before the jobs'
    parts.append("<h2>Images</h2><table><tr><th>prompt</th>")
    parts += [f"<th>{input_name(n)}</th>" for n in range(shown)]
    parts += [f"<th>{'<br>'.join(_e(line) for line in results.job_label(job))}</th>" for job in jobs]
    parts.append("</tr>")
    for key, found in zip(results.items, inputs):
        parts.append(
            f"<tr><td class='prompt'><b>{_e(key[0])}</b>"
            f"{'' if key[1] == 0 else ' #' + str(key[1])}<br>{_e(results.prompt(key))}</td>"
        )
        for path in [*found, *[None] * (shown - len(found))]:
            parts.append(_cell(path, page_dir, key[0], ""))
        for job in jobs:
            record = job.records.get(key)
            path = None if record is None else job.image_path(key, extract_to)
            parts.append(_cell(path, page_dir, key[0], f"seed {_e(record and record.get('seed'))}"))
        parts.append("</tr>")
    parts.append("</table>")
    parts += _manifest_table(results, page_dir)
    parts.append("</body></html>\n")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def _cell(path: Path | None, page_dir: Path, alt: str, caption: str) -> str:
    """One image of the table, linked to its file, or a grey box where there is none."""
    if path is None:
        return "<td class='cell'><div class='missing'></div></td>"
    src = _href(path, page_dir)
    return f"<td class='cell'><a href='{src}'><img src='{src}' alt='{_e(alt)}'></a>{caption}</td>"


def _manifest_table(results: SweepResults, page_dir: Path) -> list[str]:
    rows = [(job, record) for job in results.jobs for record in job.records.values()]
    present = {k for _, r in rows for k in r}
    # the record's own fields in their order (those any record has), then the rows' columns
    known = [f for f in FIELDS if f in present and f != "sha256"]
    columns = ["job", *known, *sorted(present - set(FIELDS)), "sha256"]
    out = ["<h2>Manifest</h2><table><tr>", *(f"<th>{_e(c)}</th>" for c in columns), "</tr>"]
    for job, record in rows:
        out.append("<tr>")
        for column in columns:
            if column == "job":
                out.append(f"<td>{_e(job.name)}</td>")
            elif column == "file_name":
                image = job.image_path((record["id"], record["k"]), results.dir / EXTRACTED)
                out.append(f"<td><a href='{_href(image, page_dir)}'>{_e(record['file_name'])}</a></td>")
            else:
                out.append(f"<td>{_e(record.get(column))}</td>")
        out.append("</tr>")
    out.append("</table>")
    return out

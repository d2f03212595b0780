"""`flux-batch-grid SWEEP_DIR`: a comparison grid (PNG) and, with --html, a gallery page. Items
rendered from input images (edits) show them first, in columns (or rows) labelled `input`,
`input_1`, …, beside their outputs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flux_batch.errors import EXIT_BAD_INPUT, FluxBatchError
from flux_batch.store.input_files import input_name

ITEM_AXES = ("prompt", "id")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="flux-batch-grid",
        description="Draw a labelled comparison grid of a flux-batch sweep: jobs against prompts.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (hydra.sweep.dir)")
    parser.add_argument("-o", "--output", type=Path, help="grid file (default: SWEEP_DIR/grid.png)")
    parser.add_argument(
        "--rows",
        choices=(*ITEM_AXES, "job"),
        default=None,
        help="what the rows are: prompt (labelled by prompt), id, or job (default: prompt)",
    )
    parser.add_argument(
        "--cols", choices=(*ITEM_AXES, "job"), default=None, help="what the columns are (default: job)"
    )
    parser.add_argument(
        "--max-prompts",
        type=int,
        default=None,
        metavar="N",
        help="only the first N prompts (images) of the sweep",
    )
    parser.add_argument(
        "--cell",
        type=int,
        default=256,
        metavar="PX",
        help="thumbnail size: each image is scaled to fit PX×PX (default 256)",
    )
    parser.add_argument(
        "--html", action="store_true", help="also write index.html, a static gallery, next to the grid"
    )
    args = parser.parse_args(argv)
    args.rows, args.cols = _axes(parser, args.rows, args.cols)
    if args.max_prompts is not None and args.max_prompts < 1:
        parser.error("--max-prompts: must be at least 1")
    if not 16 <= args.cell <= 2048:
        parser.error("--cell: must be between 16 and 2048")
    return args


def _axes(parser, rows: str | None, cols: str | None) -> tuple[str, str]:
    if rows is None and cols is None:
        return "prompt", "job"
    if rows is None:
        rows = "job" if cols in ITEM_AXES else "prompt"
    if cols is None:
        cols = "job" if rows in ITEM_AXES else "prompt"
    if (rows == "job") == (cols == "job"):
        parser.error(f"--rows {rows} --cols {cols}: one axis must be job, the other prompt or id")
    return rows, cols


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        out = make(args)
    except FluxBatchError as e:
        print(f"flux-batch-grid: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    print(out)


def make(args: argparse.Namespace) -> str:
    from flux_batch.sweep import gallery, grid
    from flux_batch.sweep import results as sweep_results

    results = sweep_results.load(args.sweep_dir)
    if args.max_prompts:
        results.items = results.items[: args.max_prompts]
    item_axis = args.rows if args.rows != "job" else args.cols
    item_labels = [_item_label(results, key, item_axis) for key in results.items]
    extract_to = results.dir / sweep_results.EXTRACTED
    inputs = [results.input_paths(key, extract_to) for key in results.items]
    shown = max(map(len, inputs), default=0)  # input columns, before the jobs'
    job_labels = [[input_name(n)] for n in range(shown)] + [results.job_label(job) for job in results.jobs]
    cells = [
        [*found, *[None] * (shown - len(found))]
        + [job.image_path(key, extract_to) if key in job.records else None for job in results.jobs]
        for key, found in zip(results.items, inputs)
    ]
    if args.rows == "job":
        cells = [list(column) for column in zip(*cells)]
        rows, cols = job_labels, item_labels
    else:
        rows, cols = item_labels, job_labels
    out = args.output or args.sweep_dir / "grid.png"
    grid.draw(cells, grid.Axis(rows), grid.Axis(cols), args.cell, out, title=results.dir.name)
    written = [str(out)]
    if args.html:
        written.append(str(gallery.write(results, out.parent / "index.html", grid_png=out)))
    return "\n".join(written)


def _item_label(results, key: tuple[str, int], axis: str) -> list[str]:
    if axis == "id":
        return [key[0] if key[1] == 0 else f"{key[0]} #{key[1]}"]
    return [results.prompt(key) if key[1] == 0 else f"#{key[1]} {results.prompt(key)}"]


if __name__ == "__main__":
    main()

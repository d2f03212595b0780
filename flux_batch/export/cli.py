"""`flux-batch-export RUN_DIR --to webdataset|parquet [--shard-size N] [-o OUT_DIR]`.

Converts a run of any layout. Every image is checked against its manifest sha256 as it is
read; the export is built in a hidden folder beside OUT_DIR and renamed into place only
when complete, so a kill or an error leaves nothing under the final name (a later export
removes the leftover)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from flux_batch.errors import FluxBatchError, LockedError
from flux_batch.export import parquet, webdataset
from flux_batch.export.samples import ExportError, input_columns, read_run, samples
from flux_batch.store.atomic import fsync_dir
from flux_batch.store.card import card, source_of
from flux_batch.store.layouts import WebDataset
from flux_batch.store.lock import RunLock
from flux_batch.store.names import MANIFEST, README, RUN_INFO


class Format(NamedTuple):
    write: Callable  # (samples, out folder, records, shard_size)
    data_files: list[str]  # the card's
    default_size: int  # --shard-size
    inputs_text: str  # the card's paragraph on the input images of edits


FORMATS = {
    "webdataset": Format(
        webdataset.write_webdataset, webdataset.DATA_FILES, WebDataset.default_size, webdataset.INPUTS_TEXT
    ),
    "parquet": Format(parquet.write_parquet, parquet.DATA_FILES, parquet.ROWS_PER_FILE, parquet.INPUTS_TEXT),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flux-batch-export",
        description="Convert a finished flux-batch run into WebDataset tar shards or Parquet "
        "files, with a dataset card; every image is checked against its sha256.",
    )
    parser.add_argument("run_dir", type=Path, help="a flux-batch run directory (any layout)")
    parser.add_argument("--to", required=True, choices=tuple(FORMATS))
    parser.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="samples per tar file or rows per Parquet file (default 1000)",
    )
    parser.add_argument("-o", "--output", type=Path, help="folder to create (default: RUN_DIR-<format>)")
    a = parser.parse_args(argv)
    try:
        out = export(a.run_dir, a.to, a.shard_size or FORMATS[a.to].default_size, a.output)
    except FluxBatchError as e:
        print(f"flux-batch-export: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print(f"written {out}")


def export(run_dir: Path, to: str, shard_size: int, out: Path | None = None) -> Path:
    if shard_size < 1:
        raise ExportError(f"--shard-size={shard_size}: must be an integer >= 1")
    run_dir = run_dir.resolve()
    out = (out or run_dir.with_name(f"{run_dir.name}-{to}")).resolve()
    if out.exists():
        raise ExportError(f"{out}: already exists; remove it or choose another -o")
    write, data_files = FORMATS[to].write, FORMATS[to].data_files
    lock = _lock_finished_run(run_dir)
    try:
        records = read_run(run_dir)
        partial = out.with_name(f".{out.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # what a killed export left
        try:
            write(samples(run_dir, records), partial, records, shard_size)
            inputs = input_columns(records) > 0
            _write_card(run_dir, partial, data_files, len(records), to, shard_size, inputs)
            _fsync_tree(partial)  # on disk before the name says complete: a power loss tears nothing
            os.rename(partial, out)
            fsync_dir(out.parent)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    finally:
        if lock is not None:
            lock.release()
    return out


def _lock_finished_run(run_dir: Path) -> RunLock | None:
    """The run lock, held while exporting: a run another process is still writing is refused
    (its manifest lists only what is done so far), and no run starts meanwhile. None when the
    lock cannot be taken at all (a read-only copy of a run: nobody writes it)."""
    if not (run_dir / MANIFEST).is_file():
        return None  # not a run: read_run names what is missing, and no lock file is made
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except LockedError as e:
        raise ExportError(f"{e}; nothing was exported") from None
    except OSError:
        return None
    return lock


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_dir():
            fsync_dir(path)
        else:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def _write_card(
    run_dir: Path, out: Path, data_files: list[str], count: int, to: str, shard_size: int, inputs: bool
) -> None:
    """README.md of the export; `inputs`: its images have input images, which it says where to find."""
    info = json.loads((run_dir / RUN_INFO).read_text()) if (run_dir / RUN_INFO).exists() else {}
    layout = f"{to}, {shard_size:,} samples per file, exported from {run_dir.name}"
    settings, files = info.get("settings", {}), info.get("files")
    extra = FORMATS[to].inputs_text if inputs else ""
    (out / README).write_text(
        card(run_dir.name, data_files, settings, count, layout, extra, files, inputs, source_of(info)),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()

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

from flux_batch.errors import FluxBatchError
from flux_batch.export.parquet import DATA, write_parquet
from flux_batch.export.samples import ExportError, read_run, samples
from flux_batch.export.tar_shards import SHARDS, write_shards
from flux_batch.store.atomic import fsync_dir
from flux_batch.store.card import card
from flux_batch.store.layout import README, RUN_INFO

DEFAULT_SHARD_SIZE = {"webdataset": 1000, "parquet": 1000}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flux-batch-export",
        description="Convert a finished flux-batch run into WebDataset tar shards or Parquet "
                    "files, with a dataset card; every image is checked against its sha256.")
    parser.add_argument("run_dir", type=Path, help="a flux-batch run directory (any layout)")
    parser.add_argument("--to", required=True, choices=("webdataset", "parquet"))
    parser.add_argument("--shard-size", type=int, default=None,
                        help="samples per tar file or rows per Parquet file (default 1000)")
    parser.add_argument("-o", "--output", type=Path, help="folder to create (default: RUN_DIR-<format>)")
    a = parser.parse_args(argv)
    try:
        out = export(a.run_dir, a.to, a.shard_size or DEFAULT_SHARD_SIZE[a.to], a.output)
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
    records = read_run(run_dir)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a killed export left
    try:
        if to == "webdataset":
            index = write_shards(samples(run_dir, records), partial, shard_size)
            _write_index(index, partial)
            data_files = [f"{SHARDS}/*.tar"]
        else:
            write_parquet(samples(run_dir, records), partial, len(records), shard_size)
            data_files = [f"{DATA}/*.parquet"]
        _write_card(run_dir, partial, data_files, len(records), to, shard_size)
        _fsync_tree(partial)  # on disk before the name says complete: a power loss tears nothing
        os.rename(partial, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_dir():
            fsync_dir(path)
        else:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def _write_index(index: list[dict], out: Path) -> None:
    """index.parquet: every sample's key, shard, id, k and record, when pyarrow is there."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return
    pq.write_table(pa.Table.from_pylist(index), out / "index.parquet")


def _write_card(run_dir: Path, out: Path, data_files: list[str], count: int, to: str,
                shard_size: int) -> None:
    info = json.loads((run_dir / RUN_INFO).read_text()) if (run_dir / RUN_INFO).exists() else {}
    layout = f"{to}, {shard_size:,} samples per file, exported from {run_dir.name}"
    (out / README).write_text(card(run_dir.name, data_files, info.get("settings", {}), count, layout),
                              encoding="utf-8")


if __name__ == "__main__":
    main()

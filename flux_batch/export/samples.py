"""A run's samples read back for export: each manifest record with its image's bytes, checked
against the record's sha256 before anything is written."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from flux_batch.errors import FluxBatchError
from flux_batch.store.layouts.tars import Sample
from flux_batch.store.manifest import read_records
from flux_batch.store.names import MANIFEST
from flux_batch.store.reader import RunImages


class ExportError(FluxBatchError):
    exit_code = 2


def read_run(run_dir: Path) -> list[dict]:
    """The run's records, or ExportError naming what is missing."""
    if not (run_dir / MANIFEST).is_file():
        raise ExportError(f"{run_dir}: not a flux-batch run directory (no {MANIFEST})")
    records = read_records(run_dir)
    if not records:
        raise ExportError(f"{run_dir / MANIFEST}: no images to export")
    return records


def samples(run_dir: Path, records: list[dict]) -> Iterator[Sample]:
    """Each record's sample, its image read (from a file or a tar shard) and checked against
    the record's sha256; its key is its place in the manifest, 9 digits (ids may hold dots,
    keys may not)."""
    images = RunImages(run_dir)
    for number, record in enumerate(records):
        path = run_dir / record["file_name"]
        try:
            data = images.read(record["file_name"])
        except OSError as e:
            raise ExportError(
                f"{path}: cannot read the image of manifest line {number + 1} ({e.strerror or e})"
            ) from None
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise ExportError(
                f"{path}: its sha256 differs from manifest line {number + 1}: "
                "the file changed after it was written; nothing was exported"
            )
        yield Sample(f"{number:09d}", path.suffix.lstrip("."), data, record, record["prompt"])

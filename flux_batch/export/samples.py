"""A run's samples read back for export: each manifest record with its image's bytes and its
input images' (the copies the run kept), checked against the record's sha256s before anything
is written."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

from flux_batch.errors import FluxBatchError
from flux_batch.store.input_files import COPY, input_name
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
    """Each record's sample, its image and inputs read (from files or a tar shard) and checked
    against the record's sha256s; its key is its place in the manifest, 9 digits (ids may hold
    dots, keys may not); its inputs `input.<ext>`, `input_1.<ext>`, …"""
    images = RunImages(run_dir)
    for number, record in enumerate(records):
        path = run_dir / record["file_name"]
        data = _checked(images, run_dir, record["file_name"], record.get("sha256"), number, "image")
        inputs = tuple(
            (
                f"{input_name(n)}{Path(file_name).suffix}",
                _checked(images, run_dir, file_name, sha, number, "input"),
            )
            for n, (file_name, sha) in enumerate(copies(record))
        )
        yield Sample(f"{number:09d}", path.suffix.lstrip("."), data, record, record["prompt"], inputs)


def copies(record: dict) -> list[tuple[str, str]]:
    """(file_name, sha256) of each input copy the record names; none for a run that kept none."""
    return [(i[COPY], i.get("sha256")) for i in record.get("inputs") or () if COPY in i]


def input_columns(records: list[dict]) -> int:
    """The most input copies one record has: the export's input columns."""
    return max((len(copies(record)) for record in records), default=0)


def _checked(
    images: RunImages, run_dir: Path, file_name: str, sha256: str | None, number: int, what: str
) -> bytes:
    path = run_dir / file_name
    try:
        data = images.read(file_name)
    except OSError as e:
        raise ExportError(
            f"{path}: cannot read the {what} of manifest line {number + 1} ({e.strerror or e})"
        ) from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ExportError(
            f"{path}: its sha256 differs from manifest line {number + 1}: "
            "the file changed after it was written; nothing was exported"
        )
    return data

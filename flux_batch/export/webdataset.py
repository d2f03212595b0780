"""`--to webdataset`: tar shards `shards/000000.tar`, … of `shard_size` samples, written by the
run's own tar writer (store/layouts/tars.py: `<key>.<png|webp|jpg>`, a copy of each input image
of an edit `<key>.input.<ext>`, `<key>.input_1.<ext>`, …, `<key>.json` with the manifest
record, `<key>.txt` with the prompt), the layout `webdataset.WebDataset` and `datasets`'
webdataset builder read; plus `index.parquet`, one row per sample: its key, shard and record
(store/sample_index.py, the run's own index writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from flux_batch.faults import crash_point
from flux_batch.store.layouts import WebDataset
from flux_batch.store.layouts.tar_names import tar_name
from flux_batch.store.layouts.tars import Sample, TarWriter
from flux_batch.store.names import SHARDS
from flux_batch.store.sample_index import row, write_index

DATA_FILES = WebDataset().data_files("")
INPUTS_TEXT = WebDataset().inputs_text()[1]


def write_webdataset(samples: Iterable[Sample], out: Path, records: list[dict], shard_size: int) -> None:
    """The shards and their index into `out`."""
    (out / SHARDS).mkdir(parents=True)
    rows: list[dict] = []
    tar: TarWriter | None = None
    try:
        for sample in samples:
            if tar is not None and tar.count == shard_size:
                tar.seal()
                crash_point("export_shard_written")
                tar = None
            if tar is None:
                name = tar_name(None, len(rows) // shard_size)
                tar = TarWriter(out / name)
            tar.add(sample, sample.record)
            rows.append(row(sample.key, name, sample.record))
        if tar is not None:
            tar.seal()
            tar = None
    finally:
        if tar is not None:
            tar.abandon()
    _write_index(rows, out)


def _write_index(rows: list[dict], out: Path) -> None:
    """index.parquet, when pyarrow is there (the tars alone are the dataset)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    write_index(rows, out / "index.parquet", durable=False)  # the export is fsynced whole

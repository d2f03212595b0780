"""WebDataset tar shards: `shards/000000.tar`, … of `shard_size` samples, each sample
`<key>.<png|webp|jpg>` (the image as rendered), `<key>.json` (its manifest record) and
`<key>.txt` (its prompt), the layout `webdataset.WebDataset` and `datasets`' webdataset
builder read; plus `index.parquet`, one row per sample: its key, shard and record."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable

from flux_batch.export.samples import Sample
from flux_batch.faults import crash_point

SHARDS = "shards"


def write_shards(samples: Iterable[Sample], out: Path, shard_size: int) -> list[dict]:
    """Write the shards into `out`; the index rows (key, shard, record as JSON)."""
    (out / SHARDS).mkdir(parents=True)
    index: list[dict] = []
    tar, count = None, 0
    try:
        for sample in samples:
            if tar is None or count == shard_size:
                if tar is not None:
                    tar.close()
                    crash_point("export_shard_written")
                name = f"{SHARDS}/{len(index) // shard_size:06d}.tar"
                tar, count = tarfile.open(out / name, "w", format=tarfile.USTAR_FORMAT), 0
            record = json.dumps(sample.record, ensure_ascii=False).encode("utf-8")
            for extension, data in ((sample.extension, sample.image), ("json", record),
                                    ("txt", sample.record["prompt"].encode("utf-8"))):
                _add(tar, f"{sample.key}.{extension}", data)
            count += 1
            index.append({"key": sample.key, "shard": name, "id": sample.record["id"],
                          "k": sample.record["k"], "record": record.decode("utf-8")})
    finally:
        if tar is not None:
            tar.close()
    return index


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # no clock: the same run, the same bytes
    tar.addfile(info, io.BytesIO(data))

"""The Parquet index of WebDataset tar shards: one row per sample (its key, shard, id, k and
whole record as JSON), so a dataset's samples can be listed, filtered or joined with
`pyarrow` or `datasets.load_dataset("parquet", ...)` without opening a tar."""

from __future__ import annotations

import io
import json
from pathlib import Path


def row(key: str, shard: str, record: dict) -> dict:
    return {
        "key": key,
        "shard": shard,
        "id": record["id"],
        "k": record["k"],
        "record": json.dumps(record, ensure_ascii=False),
    }


def write_index(rows: list[dict], path: Path, durable: bool = True) -> None:
    """The rows as one Parquet file, written atomically (a reader never sees half of it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flux_batch.store.atomic import write_atomic

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("shard", pa.string()),
            ("id", pa.string()),
            ("k", pa.int64()),
            ("record", pa.string()),
        ]
    )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    write_atomic(path, buffer.getvalue(), durable=durable)

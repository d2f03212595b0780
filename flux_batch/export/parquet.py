"""Parquet files: `data/train-00000-of-00003.parquet`, … of `shard_size` rows, each row one
image (bytes and path, as the `datasets` Image feature stores them) with its record's fields as
columns and the whole record as JSON (a row's own columns vary from run to run). A run with
input images (edits) has an image column for each: `input`, `input_1`, … (as many as a record
has at most; empty where a row has fewer). A prompt row's own text columns (a template's slot
values, a class label) are string columns too, so a labelled dataset loads with its labels;
other carried values stay in the record. The schema carries the `datasets` features, so
`load_dataset("parquet", …)` and the Hub's viewer show the images as images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from flux_batch.export.samples import ExportError, copies, input_columns
from flux_batch.faults import crash_point
from flux_batch.record import FIELDS
from flux_batch.store.input_files import input_name
from flux_batch.store.layouts import LAYOUTS
from flux_batch.store.layouts.tars import Sample

DATA = "data"
DATA_FILES = [f"{DATA}/*.parquet"]
ROWS_PER_FILE = 1000  # the default --shard-size
COLUMNS = {  # record field -> (arrow type name, datasets dtype)
    "id": ("string", "string"),
    "k": ("int64", "int64"),
    "prompt": ("string", "string"),
    "seed": ("int64", "int64"),
    "width": ("int64", "int64"),
    "height": ("int64", "int64"),
    "steps": ("int64", "int64"),
    "guidance": ("float64", "float64"),
    "negative_prompt": ("string", "string"),
    "true_cfg": ("float64", "float64"),
    "scheduler": ("string", "string"),
    "model": ("string", "string"),
    "quant": ("string", "string"),
    "file_name": ("string", "string"),
    "sha256": ("string", "string"),
}
ROWS_PER_GROUP = 100  # images per row group: a reader holds one group of images at a time
INPUTS_TEXT = (
    "\nAn image rendered from input images (an edit) has them in the image columns `input`, "
    "`input_1`, … (empty where it has fewer); `record` names each input's file.\n"
)


def write_parquet(samples: Iterable[Sample], out: Path, records: list[dict], shard_size: int) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(
            "flux-batch-export --to parquet needs pyarrow: pip install 'flux-batch[export]'"
        ) from None
    inputs = [input_name(n) for n in range(input_columns(records))]
    placed = {name for layout in LAYOUTS.values() for name in layout.placed_fields}  # a tar's shard, key
    labels = text_columns(records, taken={"image", "record", *inputs, *COLUMNS, *placed})
    schema = _schema(pa, inputs, labels)
    files = -(-len(records) // shard_size)
    (out / DATA).mkdir(parents=True)
    rows: list[dict] = []
    written = 0

    def flush() -> None:
        nonlocal rows, written
        path = out / DATA / f"train-{written:05d}-of-{files:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=ROWS_PER_GROUP)
        crash_point("export_shard_written")
        rows, written = [], written + 1

    for sample in samples:
        row = {"image": {"bytes": sample.image, "path": Path(sample.record["file_name"]).name}}
        row.update(_inputs(sample, inputs))
        row.update({name: sample.record.get(name) for name in [*COLUMNS, *labels]})
        row["record"] = json.dumps(sample.record, ensure_ascii=False)
        rows.append(row)
        if len(rows) == shard_size:
            flush()
    if rows:
        flush()


def _inputs(sample: Sample, columns: list[str]) -> dict:
    """The sample's inputs as image cells, in the run's input columns (None past its own)."""
    names = [Path(file_name).name for file_name, _ in copies(sample.record)]
    cells = [{"bytes": data, "path": name} for (_, data), name in zip(sample.inputs, names)]
    return dict(zip(columns, cells + [None] * (len(columns) - len(cells))))


def text_columns(records: list[dict], taken: set[str]) -> list[str]:
    """The rows' own columns (not manifest fields, nor `taken`) whose every value is text or
    absent, in the order they first appear: labels that become columns of their own."""
    text: dict[str, bool] = {}
    for record in records:
        for name, value in record.items():
            if name in FIELDS or name in taken:
                continue
            text[name] = text.get(name, True) and (value is None or isinstance(value, str))
    return [name for name, only_text in text.items() if only_text]


def _schema(pa, inputs: list[str], labels: list[str]):
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field(name, image) for name in ["image", *inputs]]
    fields += [pa.field(name, getattr(pa, arrow)()) for name, (arrow, _) in COLUMNS.items()]
    fields += [pa.field(name, pa.string()) for name in labels]
    fields.append(pa.field("record", pa.string()))
    features = {name: {"_type": "Image"} for name in ["image", *inputs]}
    features["record"] = {"dtype": "string", "_type": "Value"}
    features.update({name: {"dtype": dtype, "_type": "Value"} for name, (_, dtype) in COLUMNS.items()})
    features.update({name: {"dtype": "string", "_type": "Value"} for name in labels})
    # keys in the schema's order: datasets builds its features from this mapping
    ordered = {name: features[name] for name in ["image", *inputs, *COLUMNS, *labels, "record"]}
    metadata = {"huggingface": json.dumps({"info": {"features": ordered}})}
    return pa.schema(fields, metadata=metadata)

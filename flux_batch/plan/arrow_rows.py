"""Parquet and Arrow prompt sources: a `.parquet` or `.arrow` file, a folder of Parquet files, or
a folder written by `datasets.Dataset.save_to_disk` (Arrow IPC stream files, in the order its
`state.json` lists them), read in record batches with pyarrow alone: `datasets` is never imported.

`raw_rows()` yields each row as the text readers do (prompts.py checks it with the same rules),
numbered 1, 2, ... through the whole source; a problem names the file inside a folder and the
row's number in that file. A file's schema is checked once, before its rows: a missing prompt
column, a column no JSON value can hold, is one line, not one per row.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from flux_batch.errors import PromptFileError

PARQUET, ARROW = "parquet", "arrow"
FORMATS = (PARQUET, ARROW)
EXTENSIONS = {".parquet": PARQUET, ".arrow": ARROW}
LABELS = {PARQUET: "Parquet", ARROW: "Arrow"}
BATCH_ROWS = 65_536  # rows converted to Python at a time: a few MB of prompts
DATASET_STATE = "state.json"  # save_to_disk's list of its Arrow files, in order
DATASET_DICT = "dataset_dict.json"  # save_to_disk of a DatasetDict: one folder per split
# Of each data file, besides its name, size and mtime: the first and last 64 KiB (a Parquet
# file's footer: its row groups' offsets and statistics) go into the plan digest
EDGE_BYTES = 64 * 1024

# (number through the whole source, the record, a problem or None, where: FILE:ROW)
TableRows = Iterator[tuple[int, dict[str, Any], "str | None", str]]


def folder_format(folder: Path) -> str:
    """parquet or arrow: what a folder holds (dataset.format=auto)."""
    if (folder / DATASET_DICT).is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / DATASET_STATE).is_file())
        one = f" (one of: {', '.join(splits)})" if splits else ""
        raise PromptFileError([f"{folder}: a saved DatasetDict; set dataset.path to one split's folder{one}"])
    if (folder / DATASET_STATE).is_file() or (_named(folder, ARROW) and not _named(folder, PARQUET)):
        return ARROW
    if _named(folder, PARQUET):
        return PARQUET
    raise PromptFileError(
        [
            f"{folder}: is a directory, not a prompt file, and holds no Parquet (.parquet) "
            "or Arrow (.arrow) files"
        ]
    )


def _named(folder: Path, fmt: str) -> list[Path]:
    """The folder's files with the format's extension, by name; hidden and `_` files (a
    writer's _SUCCESS, _metadata) left out, and subfolders not read."""
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() == f".{fmt}" and not p.name.startswith((".", "_")) and p.is_file()
        ),
        key=lambda p: p.name,
    )


def data_files(path: Path, fmt: str) -> list[Path]:
    """The files a source's rows come from, in order: the file itself, or a folder's."""
    if not path.is_dir():
        return [path]
    files = _listed(path) if fmt == ARROW and (path / DATASET_STATE).is_file() else _named(path, fmt)
    if not files:
        raise PromptFileError([f"{path}: no {LABELS[fmt]} (.{fmt}) files in the folder"])
    return files


def _listed(folder: Path) -> list[Path]:
    """The Arrow files save_to_disk's state.json lists, in its order (its shards' order)."""
    where = folder / DATASET_STATE
    try:
        names = [entry["filename"] for entry in json.loads(where.read_bytes())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PromptFileError([f"{where}: not a readable datasets state file ({e})"]) from None
    files = []
    for name in names:
        file = folder / str(name)
        if not isinstance(name, str) or file.parent != folder or not file.is_file():
            raise PromptFileError([f"{where}: lists {name!r}, which is not a file in {folder}"])
        files.append(file)
    return files


def identity(path: Path, fmt: str) -> bytes:
    """What the plan digest reads of a source: each data file's name, size, mtime and first
    and last 64 KiB, not all its bytes (a 10 GB folder would take a minute at every start)."""
    digest = hashlib.sha256()
    for file in data_files(path, fmt):
        stat = file.stat()
        digest.update(json.dumps([file.name, stat.st_size, stat.st_mtime_ns]).encode())
        with open(file, "rb") as f:
            digest.update(f.read(EDGE_BYTES))
            f.seek(max(stat.st_size - EDGE_BYTES, 0))
            digest.update(f.read(EDGE_BYTES))
    return digest.digest()


def column_names(path: Path, fmt: str) -> set[str]:
    """The lowercased column names of the source's first data file (its schema alone is read);
    empty when it cannot be read (reading its rows then says why)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = data_files(path, fmt)[0]
    try:
        if fmt == PARQUET:
            schema = pq.read_schema(file)
        else:
            with pa.memory_map(str(file)) as source:
                magic = source.read(6)
                source.seek(0)
                schema = (pa.ipc.open_file if magic == b"ARROW1" else pa.ipc.open_stream)(source).schema
    except (OSError, ValueError):
        return set()
    return {name.lower() for name in schema.names}


def raw_rows(
    path: Path, fmt: str, prompt: str, image: str, columns_problem: Callable[[list[str]], str | None]
) -> TableRows:
    """Every row of the source as a record; a file that cannot be read, or whose columns are
    refused (`columns_problem`: the rule every format's column names share), ends it."""
    number = 0
    for file in data_files(path, fmt):
        in_file = 0
        try:
            for batch in _batches(file, fmt, prompt, image, columns_problem):
                for record in batch:
                    number, in_file = number + 1, in_file + 1
                    yield number, record, None, f"{file}:{in_file}"
        except _Refused as e:
            yield number, {}, str(e), str(file)
            return
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            yield number, {}, f"not a readable {LABELS[fmt]} file ({reason})", str(file)
            return


class _Refused(Exception):
    """A file's schema refused: its one line."""


def _batches(file: Path, fmt: str, prompt: str, image: str, columns_problem) -> Iterator[list[dict]]:
    """The file's rows, a record batch at a time, as dicts of JSON values."""
    if fmt == PARQUET:
        import pyarrow.parquet as pq

        with pq.ParquetFile(file) as parquet:
            texts = _checked(parquet.schema_arrow, prompt, image, columns_problem)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                yield _records(batch, texts)
        return
    import pyarrow as pa

    with pa.memory_map(str(file)) as source:
        # an IPC file (Feather v2) starts with its magic; save_to_disk writes the stream format
        if source.read(6) == b"ARROW1":
            source.seek(0)
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            source.seek(0)
            batches = reader = pa.ipc.open_stream(source)
        texts = _checked(reader.schema, prompt, image, columns_problem)
        for batch in batches:
            for start in range(0, batch.num_rows, BATCH_ROWS):
                yield _records(batch.slice(start, BATCH_ROWS), texts)


def _records(batch, texts: set[str]) -> list[dict[str, Any]]:
    """A batch's rows as dicts; dates, times and decimals as their text."""
    import pyarrow as pa

    names = batch.schema.names
    columns = [
        (column.cast(pa.string()) if name in texts else column).to_pylist()
        for name, column in zip(names, batch.columns)
    ]
    return [dict(zip(names, values)) for values in zip(*columns)]


def _checked(schema, prompt: str, image: str, columns_problem) -> set[str]:
    """The schema's refusal as _Refused, or the columns read as text."""
    names = list(schema.names)
    if (problem := columns_problem(names)) is not None:
        raise _Refused(problem)
    by_lower = {name.lower(): name for name in names}
    if prompt.lower() not in by_lower:
        shown = ", ".join(repr(name) for name in names[:20]) + (" ..." if len(names) > 20 else "")
        raise _Refused(f"no {prompt!r} column; the columns are {shown} (or set dataset.prompt_field)")
    texts = set()
    for field in schema:
        kind = _kind(field.type)
        if field.name.lower() == image.lower() and kind != "json":
            raise _Refused(
                f"column {field.name!r} ({field.type}) is not a path or a list of paths; input "
                "images are read from paths relative to the source's folder (image bytes, as a "
                "datasets Image column holds, are not read): set dataset.image_field to the "
                "column of paths"
            )
        if field.name.lower() == prompt.lower() and not _is_text(field.type):
            raise _Refused(f"column {field.name!r} holds {field.type}, not text: the prompts must be strings")
        if kind == "text":
            texts.add(field.name)
        elif kind != "json":
            raise _Refused(f"column {field.name!r} {kind}")
    return texts


def _is_text(kind) -> bool:
    import pyarrow.types as t

    if t.is_dictionary(kind):
        return _is_text(kind.value_type)
    return t.is_string(kind) or t.is_large_string(kind) or t.is_string_view(kind) or t.is_null(kind)


def _kind(kind, nested: bool = False) -> str:
    """How a column's values reach the record: "json" as they are (`to_pylist`), "text" as
    their text (a date, a time, a decimal), else why they cannot (binary data above all: image
    bytes would land in every manifest line)."""
    import pyarrow.types as t

    if _is_text(kind) or t.is_integer(kind) or t.is_floating(kind) or t.is_boolean(kind):
        return "json"
    if t.is_dictionary(kind):
        return _kind(kind.value_type, nested)
    if t.is_binary(kind) or t.is_large_binary(kind) or t.is_fixed_size_binary(kind) or t.is_binary_view(kind):
        return "holds binary data, which the manifest (JSON) cannot carry"
    if t.is_list(kind) or t.is_large_list(kind) or t.is_fixed_size_list(kind) or t.is_list_view(kind):
        return _kind(kind.value_type, nested=True)
    if t.is_struct(kind):
        found = [_kind(kind.field(i).type, nested=True) for i in range(kind.num_fields)]
        return next((f for f in found if f != "json"), "json")
    if (t.is_temporal(kind) or t.is_decimal(kind)) and not nested:
        return "text"
    return f"has type {kind}, which the manifest (JSON) cannot carry"

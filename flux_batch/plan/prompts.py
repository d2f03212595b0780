"""Prompt-file readers (JSONL, CSV, TSV, TXT; Parquet and Arrow in arrow_rows.py) and row
validation.

`read_rows()` returns every row of a file, or raises PromptFileError listing every problem
as `FILE:LINE: reason` (a Parquet or Arrow row's line is its row number), so a bad file is
refused whole before any model loads.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from flux_batch import record as record_fields
from flux_batch.config import FluxBatchConfig, SamplerConfig, rule_of
from flux_batch.errors import PromptFileError
from flux_batch.plan import arrow_rows

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
INT_TEXT = re.compile(r"[+-]?\d+")
MAX_SEED = 2**63 - 1
# Far beyond what the text encoders read (77 CLIP, 512 T5 tokens); a longer "prompt" is a
# wrong column or a binary file, and would be copied into every image and manifest line.
MAX_PROMPT_CHARS = 20_000
# Unicode category Cc but tab and newline: NUL and the other C0 controls, DEL and the C1
# controls. PNG text chunks may not hold them, nor should a manifest or a caption. A carriage
# return is one only alone: CRLF inside a quoted CSV field is a CRLF file's newline, kept as read
# (an auto id hashes the prompt: changing it would re-render such rows of existing runs).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")
CONTROL_NAMES = {0x00: "NUL", 0x0D: "carriage return", 0x1B: "escape", 0x7F: "DEL"}
CONTROL_RULE = "only tab and newline (LF or CRLF) may appear in text written into the manifest and the image"
# What a row carries into its manifest line and its image beside the fields flux-batch writes:
# real prompt sets carry a handful of columns (a category, a source, a note), and the bound keeps
# a line and an image's metadata small next to the prompt's own 20,000 characters at most.
MAX_CARRIED_COLUMNS = 64
MAX_CARRIED_BYTES = 16 * 1024  # of the carried columns as JSON, UTF-8

# Per-row settings a prompt file may carry, each checked by the rule of its config field
# (config/schema.py): the rule the config's own value is checked by.
INT_OVERRIDES = ("num_images", "seed", "width", "height", "steps")
FLOAT_OVERRIDES = ("guidance",)
TEXT_OVERRIDES = ("negative_prompt", "scheduler", "aspect")
RULES = {
    name: rule_of(FluxBatchConfig if name in ("num_images", "seed") else SamplerConfig, name)
    for name in (*INT_OVERRIDES, *FLOAT_OVERRIDES, "true_cfg", "scheduler", "aspect")
}
# Manifest keys a leftover column of the prompt file may not take over.

EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".txt": "txt"}
TABLE_FORMATS = arrow_rows.FORMATS  # parquet, arrow: read with pyarrow, a file or a folder


@dataclass
class Row:
    line: int  # 1-based line where the row starts
    prompt: str
    id: str | None  # explicit id, if the row has one
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # other columns, carried to the manifest
    images: tuple[str, ...] = ()  # input image paths as the row names them (relative to the file)
    inputs: tuple = ()  # those images checked and hashed (plan/inputs.InputImage), once resolved


@dataclass
class Fields:
    prompt: str = "prompt"
    id: str = "id"
    image: str = "image"


def table_format(path: Path, fmt: str) -> str | None:
    """parquet or arrow for a source read with pyarrow (a file, or a folder of such files, or
    one save_to_disk wrote), None for a text file."""
    if fmt in TABLE_FORMATS:
        return fmt
    if fmt != "auto" or path.suffix.lower() in EXTENSIONS:  # a.jsonl/, a folder: not a table
        return None
    if path.is_dir():
        return arrow_rows.folder_format(path)
    return arrow_rows.EXTENSIONS.get(path.suffix.lower())


def detect_format(path: Path, fmt: str) -> str:
    """The format of `dataset.path` (a file, or for Parquet and Arrow a folder too)."""
    if (table := table_format(path, fmt)) is not None:
        return table
    if fmt != "auto":
        return fmt
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise PromptFileError(
            [
                f"{path}: unknown prompt file format {path.suffix or '(no extension)'!r}; "
                f"use .jsonl, .csv, .tsv, .txt, .parquet or .arrow, or set dataset.format"
            ]
        )
    return found


def is_source(path: Path, fmt: str) -> bool:
    """Whether `path` is there to be read: a file, or a folder of Parquet or Arrow files."""
    return path.is_file() or (path.is_dir() and table_format(path, fmt) is not None)


def read_rows(path: str | os.PathLike, fmt: str = "auto", fields: Fields | None = None) -> list[Row]:
    """Every row of the file, or PromptFileError listing every problem."""
    return list(stream_rows(path, fmt, fields))


def streamable(path: Path, fmt: str, fields: Fields) -> bool:
    """Whether the file's rows can be read again at each pass of the plan rather than held:
    a Parquet or Arrow source without a column of input images (those are hashed once)."""
    table = table_format(path, fmt)
    return table is not None and fields.image.lower() not in arrow_rows.column_names(path, table)


def stream_rows(path: str | os.PathLike, fmt: str = "auto", fields: Fields | None = None) -> Iterator[Row]:
    """The file's rows as they are read; the problems of all rows are raised together
    (PromptFileError) once the last row is read, so no reader acts on a bad file's rows."""
    path = Path(path)
    fields = fields or Fields()
    if not path.exists():
        raise PromptFileError([f"{path}: prompt file not found (set dataset.path)"])
    fmt = detect_format(path, fmt)
    if fmt in TABLE_FORMATS:
        raw_rows = arrow_rows.raw_rows(
            path,
            fmt,
            fields.prompt,
            fields.image,
            lambda names: _columns_problem(names, fields, "the schema"),
        )
    else:
        raw_rows = _text_rows(path, _read_text(path), fmt, fields)
    problems: list[str] = []
    found = False
    for line, record, error, where in raw_rows:
        if error is None:
            row, errors = _to_row(line, record, fields)
            error = "; ".join(errors) if errors else None
        if error is not None:
            problems.append(f"{where}: {error}")
        else:
            found = True
            yield row
    if not found and not problems:
        problems.append(f"{path}: no prompts found")
    if problems:
        raise PromptFileError(problems)


def _text_rows(path: Path, text: str, fmt: str, fields: Fields) -> arrow_rows.TableRows:
    """A text file's rows, each with where its problems are reported: FILE:LINE."""
    if fmt == "txt":
        raw_rows = _txt(text, fields.prompt)
    else:
        raw_rows = _jsonl(text) if fmt == "jsonl" else {"csv": _csv, "tsv": _tsv}[fmt](text, fields)
    for line, record, error in raw_rows:
        yield line, record, error, f"{path}:{line}"


def _read_text(path: Path) -> str:
    if path.is_dir():
        raise PromptFileError([f"{path}: is a directory, not a prompt file"])
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptFileError(
            [f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"]
        ) from None


RawRows = Iterator[tuple[int, dict[str, Any], "str | None"]]


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # split on \n only: str.splitlines would also split on \x0c, \u2028 and friends
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


def _jsonl(text: str) -> RawRows:
    for number, line in _lines(text):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield number, {}, f"invalid JSON: {e.msg} (column {e.colno})"
            continue
        if not isinstance(record, dict):
            yield number, {}, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield number, record, None


def _txt(text: str, prompt_field: str) -> RawRows:
    for number, line in _lines(text):
        if line.strip():
            yield number, {prompt_field: line}, None


def _tsv(text: str, fields: Fields) -> RawRows:
    # Read literally: no quote processing (PartiPrompts has a prompt that begins with `"`).
    lines = _lines(text)
    header_line = next(((n, line) for n, line in lines if line.strip()), None)
    if header_line is None:
        return
    number, header = header_line
    columns = header.split("\t")
    if (error := _header_problem(columns, fields)) is not None:
        yield number, {}, error
        return
    for number, line in lines:
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(columns):
            yield number, {}, f"{len(values)} tab-separated fields, the header has {len(columns)}"
            continue
        yield number, dict(zip(columns, values)), None


def _csv(text: str, fields: Fields) -> RawRows:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns: list[str] | None = None
    start = 1
    try:
        for values in reader:
            line, start = start, reader.line_num + 1
            if not values:  # an empty line
                continue
            if columns is None:
                columns = values
                if (error := _header_problem(columns, fields)) is not None:
                    yield line, {}, error
                    return
                continue
            if len(values) != len(columns):
                yield line, {}, f"{len(values)} comma-separated fields, the header has {len(columns)}"
                continue
            yield line, dict(zip(columns, values)), None
    except csv.Error as e:
        yield start, {}, f"malformed CSV: {e}"


def _header_problem(columns: list[str], fields: Fields) -> str | None:
    """What is wrong with a CSV or TSV header, found once rather than again on every row."""
    if (problem := _columns_problem(columns, fields)) is not None:
        return problem
    if fields.prompt.lower() not in {name.strip().lower() for name in columns}:
        # most often a file without a header row
        shown = ", ".join(repr(c[:40]) for c in columns[:5])
        return (
            f"no {fields.prompt!r} column in the header ({shown}); the first line must name "
            "the columns (or set dataset.prompt_field)"
        )
    return None


def _columns_problem(columns: list[str], fields: Fields, where: str = "the header") -> str | None:
    """What is wrong with a table's column names (a CSV or TSV header, a Parquet or Arrow
    schema), found once rather than again on every row."""
    seen: set[str] = set()
    for name in columns:
        key = name.strip().lower()
        if not key:
            return f"empty column name in {where}"
        if key in seen:
            return f"duplicate column {name!r} in {where}"
        if (problem := _control_problem(f"column name {name!r}", name)) is not None:
            return f"{where}'s {problem}; {CONTROL_RULE}"
        seen.add(key)
    if len(carried := _carried_names(seen, fields)) > MAX_CARRIED_COLUMNS:
        return (
            f"{where} has {len(columns):,} columns, {len(carried):,} of them carried into "
            f"the manifest and the image; the limit is {MAX_CARRIED_COLUMNS} carried columns"
        )
    return None


def _plain_row(line: int, record: dict[str, Any], fields: Fields) -> Row | None:
    """The row of a record holding a valid prompt and maybe a valid id, under exactly the
    configured names, and nothing else: the common case, checked quickly. None otherwise."""
    prompt = record.get(fields.prompt)
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS or CONTROL.search(prompt):
        return None
    row_id = record.get(fields.id)
    if len(record) != 1 + (row_id is not None) or (row_id is None and fields.id in record):
        return None
    if type(row_id) is int:
        row_id = str(row_id)
    if row_id is not None and (type(row_id) is not str or not ID_PATTERN.fullmatch(row_id)):
        return None
    prompt = prompt.strip()
    return Row(line, prompt, row_id) if prompt else None


def _to_row(line: int, record: dict[str, Any], fields: Fields) -> tuple[Row | None, list[str]]:
    if (row := _plain_row(line, record, fields)) is not None:
        return row, []
    by_lower: dict[str, str] = {}
    for key in record:
        lower = key.lower()
        if lower in by_lower:
            return None, [f"fields {by_lower[lower]!r} and {key!r} differ only in case"]
        by_lower[lower] = key
    errors: list[str] = _text_problems(record, fields)

    def take(name: str) -> Any:
        key = by_lower.pop(name.lower(), None)
        value = None if key is None else record[key]
        return None if value == "" else value

    prompt = take(fields.prompt)
    if prompt is None:
        errors.append(f"no {fields.prompt!r} field")
    elif not isinstance(prompt, str):
        errors.append(f"{fields.prompt!r} must be a string, got {type(prompt).__name__}")
    elif not prompt.strip():
        errors.append(f"empty {fields.prompt!r}")
    elif len(prompt) > MAX_PROMPT_CHARS:
        errors.append(
            f"{fields.prompt!r} is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}"
        )

    row_id = take(fields.id)
    if row_id is not None:
        if isinstance(row_id, int) and not isinstance(row_id, bool):
            row_id = str(row_id)
        if not isinstance(row_id, str) or not ID_PATTERN.fullmatch(row_id):
            errors.append(
                f"bad id {row_id!r}: ids are 1-128 characters of letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )

    images, image_error = _image_paths(take(fields.image), fields.image)
    errors.extend([image_error] if image_error else [])
    if not by_lower:  # only a prompt, an id and images: nothing more to check
        return (None, errors) if errors else (Row(line, prompt.strip(), row_id, images=images), [])
    overrides: dict[str, Any] = {}
    for name in INT_OVERRIDES:
        value = take(name)
        if value is not None:
            parsed, error = _parse_int(name, value, _least(RULES[name]))
            errors.extend([error] if error else [])
            overrides[name] = parsed
    for name in FLOAT_OVERRIDES:
        value = take(name)
        if value is not None:
            parsed, error = _parse_number(name, value, RULES[name].problem)
            errors.extend([error] if error else [])
            overrides[name] = parsed
    for name in ("width", "height"):
        if isinstance(overrides.get(name), int) and overrides[name] % RULES[name].multiple:
            errors.append(f"{name}={overrides[name]} is not a multiple of {RULES[name].multiple}")
    errors.extend(_sampler_overrides(take, overrides))

    extra = {key: record[key] for key in by_lower.values()}
    errors.extend(_carried_problems(extra))
    for key in extra:
        if key.lower() in record_fields.FIELDS:
            errors.append(f"column {key!r} would overwrite the manifest field of that name")
    if errors:
        return None, errors
    return Row(line, prompt.strip(), row_id, overrides, extra, images), []


MAX_IMAGES_PER_ROW = 16


def _image_paths(value: Any, name: str) -> tuple[tuple[str, ...], str | None]:
    """A row's input images: one path, or (JSON) a list of paths."""
    if value is None:
        return (), None
    paths = value if isinstance(value, list) else [value]
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        return (), f"{name!r} must be a path or a list of paths, got {json.dumps(value)[:60]}"
    if len(paths) > MAX_IMAGES_PER_ROW:
        return (), f"{name!r} names {len(paths)} images; the limit is {MAX_IMAGES_PER_ROW}"
    return tuple(p.strip() for p in paths), None


def _text_problems(record: dict[str, Any], fields: Fields) -> list[str]:
    """A control character in any column name or text of the row, nested JSON values too (the
    id's own pattern refuses them in an id): one problem naming each place."""
    found = []
    for key, value in record.items():
        if (problem := _control_problem(f"column name {key!r}", key)) is not None:
            found.append(problem)
        elif isinstance(value, str) and key.lower() != fields.id.lower():
            found.extend(filter(None, [_control_problem(repr(key), value)]))
        elif isinstance(value, (dict, list)):
            where = f"a string in {key!r}"
            found.extend(filter(None, (_control_problem(where, text) for text in _texts(value))))
    return [f"{', '.join(found)}; {CONTROL_RULE}"] if found else []


def _texts(value: Any) -> Iterator[str]:
    """Every string in a column's value: the value itself, or those nested in JSON."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def _control_problem(where: str, text: str) -> str | None:
    if (found := CONTROL.search(text)) is None:
        return None
    code = ord(found.group())
    name = CONTROL_NAMES.get(code, "control character")
    return f"{where} holds {name} U+{code:04X} at character {found.start() + 1}"


def _carried_names(lower_names: set[str], fields: Fields) -> set[str]:
    """The columns of a header a row would carry: all but the prompt, the id and the settings."""
    settings = {*INT_OVERRIDES, *FLOAT_OVERRIDES, *TEXT_OVERRIDES, "true_cfg"}
    return lower_names - {fields.prompt.lower(), fields.id.lower(), fields.image.lower(), *settings}


def _carried_problems(extra: dict[str, Any]) -> list[str]:
    """The columns a row carries, bounded in count and in size as JSON."""
    if len(extra) > MAX_CARRIED_COLUMNS:
        return [
            f"{len(extra):,} columns would be carried into the manifest and the image; the "
            f"limit is {MAX_CARRIED_COLUMNS}"
        ]
    size = len(json.dumps(extra, ensure_ascii=False).encode())
    if size > MAX_CARRIED_BYTES:
        return [
            f"the columns carried into the manifest and the image take {size:,} bytes as JSON; "
            f"the limit is {MAX_CARRIED_BYTES:,} (16 KiB)"
        ]
    return []


def _sampler_overrides(take, overrides: dict[str, Any]) -> list[str]:
    """A row's negative_prompt, true_cfg, scheduler and aspect, checked as the config's are."""
    errors: list[str] = []
    for name in TEXT_OVERRIDES:
        value = take(name)
        if value is None:
            continue
        if not isinstance(value, str):
            errors.append(f"{name} must be a string, got {type(value).__name__}")
        elif value.strip():
            overrides[name] = value.strip()
    value = take("true_cfg")
    if value is not None:
        parsed, error = _parse_number("true_cfg", value, RULES["true_cfg"].problem)
        errors.extend([error] if error else [])
        overrides["true_cfg"] = parsed
    scheduler = overrides.get("scheduler")
    if scheduler is not None and (problem := RULES["scheduler"].problem(scheduler)) is not None:
        errors.append(f"scheduler={scheduler!r}: {problem}")
    if "aspect" in overrides:
        if (problem := RULES["aspect"].problem(overrides["aspect"])) is not None:
            errors.append(f"aspect: {problem}")
        if "width" in overrides or "height" in overrides:
            errors.append("aspect and width/height both set: give one or the other")
    return errors


def _least(rule) -> int:
    """The least integer a rule accepts: a positive multiple (of 16) is at least that multiple."""
    return rule.minimum if rule.minimum is not None else rule.multiple


def _parse_int(name: str, value: Any, minimum: int) -> tuple[int | None, str | None]:
    if isinstance(value, bool):
        parsed = None
    elif isinstance(value, int):
        parsed = value
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    elif isinstance(value, str) and INT_TEXT.fullmatch(value.strip()):
        parsed = int(value)
    else:
        parsed = None
    if parsed is None:
        return None, f"{name}={value!r} is not an integer"
    if parsed < minimum or (name == "seed" and parsed > MAX_SEED):
        bound = f"between 0 and {MAX_SEED}" if name == "seed" else f">= {minimum}"
        return None, f"{name}={parsed} must be {bound}"
    return parsed, None


def _parse_number(name: str, value: Any, problem_of) -> tuple[float | None, str | None]:
    """A row's number (JSON number or CSV text), checked by the config's own check."""
    try:
        parsed = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        parsed = None
    problem = problem_of(parsed) if parsed is not None else problem_of(value)
    if problem is not None:
        return None, f"{name}={value!r} {problem}"
    return parsed, None


def find_prompt_file(path: str) -> Path:
    """The prompt file: as given, or for a relative path missing here, the copy shipped in the
    package (so the default prompts/example.jsonl works from any directory)."""
    given = Path(path).expanduser()
    shipped = Path(__file__).parents[1] / given
    if not given.exists() and not given.is_absolute() and shipped.is_file():
        return shipped
    return given

"""Parquet files, folders of them and `datasets.save_to_disk` folders as prompt sources, through
the real CLI: rows, order, carried columns, pixels, resume and every refusal."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FAST, compose_config, left_behind, manifest, pixels, write_prompts

ROWS = [
    {"key": "fox", "caption": "a red fox in the snow", "meta": {"source": "a", "n": 1}, "tags": ["x", "y"]},
    {"key": "owl", "caption": "an owl at night", "meta": {"source": "b", "n": 2}, "tags": []},
    {"key": "boat", "caption": "a boat at sunset", "meta": {"source": "c", "n": 3}, "tags": ["z"]},
]
RENAMED = ("dataset.id_field=KEY", "dataset.prompt_field=Caption")  # matched case-insensitively


def parquet(path, rows: list[dict]):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def run(cli, source, *args, check=True):
    return cli(f"dataset.path={source}", "output.dir=run", *FAST, *args, check=check)


def refusal(result) -> str:
    """The one line a refused run prints, without the CLI's own prefix."""
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    return result.stderr.strip().removeprefix("flux-batch: error: ")


def test_a_parquet_file_renders_as_the_same_rows_as_jsonl_with_nested_columns_carried(cli):
    run(cli, parquet(cli.cwd / "p.parquet", ROWS), *RENAMED)
    jsonl = write_prompts(cli.cwd / "p.jsonl", ROWS)
    cli(f"dataset.path={jsonl}", "output.dir=run-jsonl", *FAST, *RENAMED)
    from_parquet, from_jsonl = manifest(cli.cwd / "run"), manifest(cli.cwd / "run-jsonl")
    assert [r["id"] for r in from_parquet] == ["fox", "owl", "boat"]
    assert [(r["id"], r["seed"]) for r in from_parquet] == [(r["id"], r["seed"]) for r in from_jsonl]
    assert [(r["meta"], r["tags"]) for r in from_parquet] == [(row["meta"], row["tags"]) for row in ROWS]
    a, b = pixels(cli.cwd / "run"), pixels(cli.cwd / "run-jsonl")
    assert a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def test_a_folder_is_read_in_file_name_order_and_rows_are_numbered_through_it(cli):
    folder = cli.cwd / "prompts"
    folder.mkdir()
    parquet(folder / "part-1.parquet", [{"id": "c", "prompt": "third"}, {"id": "d", "prompt": "fourth"}])
    parquet(folder / "part-0.parquet", [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second"}])
    (folder / "_SUCCESS").write_bytes(b"")  # a writer's marker, not data
    result = run(cli, folder, "limit=3")
    assert "rendered 3," in result.stdout
    assert [r["id"] for r in manifest(cli.cwd / "run")] == ["a", "b", "c"]

    parquet(folder / "part-1.parquet", [{"id": "c", "prompt": "third"}, {"id": "d", "prompt": ""}])
    # a row's own problem names its file and its row there; the plan's, its row in the folder
    assert refusal(run(cli, folder, check=False)) == f"{folder / 'part-1.parquet'}:2: no 'prompt' field"
    parquet(folder / "part-1.parquet", [{"id": "c", "prompt": "third"}, {"id": "a", "prompt": "again"}])
    assert refusal(run(cli, folder, check=False)) == f"{folder}:4: duplicate id 'a' (first on line 1)"


def test_a_save_to_disk_folder_is_read_in_its_shards_order(cli):
    import datasets

    prompts = [f"a shape number {i}" for i in range(5)]
    datasets.Dataset.from_dict({"prompt": prompts, "category": list("aabbc")}).save_to_disk(
        str(cli.cwd / "saved"), num_shards=2
    )
    run(cli, cli.cwd / "saved")
    records = manifest(cli.cwd / "run")
    assert [r["prompt"] for r in records] == prompts
    assert [r["category"] for r in records] == list("aabbc")


def test_a_finished_run_is_found_finished_without_reading_the_rows_again(cli, hydra_config):
    from flux_batch.config import load
    from flux_batch.driver import plan_run
    from flux_batch.plan.known import KnownPlan

    folder = cli.cwd / "prompts"
    folder.mkdir()
    parquet(folder / "a.parquet", ROWS[:2])
    run(cli, folder, *RENAMED)
    assert "nothing to do, all 2 items already done" in run(cli, folder, *RENAMED).stdout
    cfg = load(compose_config(f"dataset.path={folder}", *FAST, *RENAMED))
    assert isinstance(plan_run(cfg, cli.cwd / "run"), KnownPlan)

    parquet(folder / "b.parquet", ROWS[2:])  # a file added to the folder is read
    assert "rendered 1, skipped 2 already done" in run(cli, folder, *RENAMED).stdout


def image_column(path):
    import datasets
    from PIL import Image

    picture = Image.new("RGB", (4, 4))
    data = datasets.Dataset.from_dict({"prompt": ["a"], "image": [picture]})
    data.cast_column("image", datasets.Image()).save_to_disk(str(path))


def write_bad(kind: str, path):
    if kind == "corrupt":
        path.write_bytes(b"PAR1" + b"\0" * 100)
    elif kind == "no prompt column":
        parquet(path, [{"id": "a", "text": "a fox", "note": "n"}])
    elif kind == "empty":
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    elif kind == "empty folder":
        path.mkdir()
        (path / "notes.txt").write_text("no data here\n")
    elif kind == "binary column":
        parquet(path, [{"prompt": "a fox", "thumbnail": b"\x89PNG"}])
    elif kind == "image bytes":
        image_column(path)


BAD = [
    ("corrupt", "bad.parquet", "bad.parquet: not a readable Parquet file ("),
    ("no prompt column", "p.parquet", "p.parquet: no 'prompt' column; the columns are 'id', 'text', 'note'"),
    ("empty", "p.parquet", "p.parquet: no prompts found"),
    ("empty folder", "data", "data: is a directory, not a prompt file, and holds no Parquet"),
    ("binary column", "p.parquet", "p.parquet: column 'thumbnail' holds binary data"),
    ("image bytes", "saved", "saved/data-00000-of-00001.arrow: column 'image' (struct<bytes: binary"),
]


@pytest.mark.parametrize("kind, name, message", BAD, ids=[b[0] for b in BAD])
def test_bad_sources_are_one_line_and_leave_nothing(cli, kind, name, message):
    write_bad(kind, cli.cwd / name)
    line = refusal(run(cli, name, check=False))
    assert line.startswith(message) and len(line.splitlines()) == 1, line
    assert left_behind(cli.cwd / "run") == []

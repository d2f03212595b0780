"""`flux-batch-export`: a finished run as WebDataset tar shards or Parquet files, read back by
the libraries people train with; checked against every sha256; never half-written."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import FAST, load_dataset, manifest, pixels, script, wait_until_stopped, write_prompts

ROWS = [{"id": f"p{i}", "prompt": f"a photo of object {i}", "num_images": 1 + i % 2} for i in range(5)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_cache):
    """A sharded run of 7 items (2 per folder), rendered once for the module."""
    from conftest import Cli

    cwd = tmp_path_factory.mktemp("export")
    cli = Cli(cwd, model_cache)
    write_prompts(cwd / "p.jsonl", ROWS)
    cli("dataset.path=p.jsonl", "output.dir=run", "output.layout=sharded", "output.shard_size=2", *FAST)
    return cwd / "run"


def export(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script("flux-batch-export"), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_webdataset_shards_read_by_datasets_and_webdataset(run, tmp_path):
    import pyarrow.parquet as pq
    import webdataset

    out = tmp_path / "wds"
    result = export(run, "--to", "webdataset", "--shard-size", "3", "-o", out)
    assert result.returncode == 0, result.stderr
    records = manifest(run)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000000.tar", "000001.tar", "000002.tar"]
    expected = pixels(run)
    loaded = load_dataset(tmp_path, "webdataset", data_files=str(out / "shards" / "*.tar"))
    assert [row["json"] for row in loaded] == records  # every item, in order, with its record
    for row in loaded:
        assert row["txt"] == row["json"]["prompt"]
        key = (row["json"]["id"], row["json"]["k"])
        assert np.array_equal(np.asarray(row["png"].convert("RGB")), expected[key])
    streamed = list(webdataset.WebDataset(str(out / "shards" / "{000000..000002}.tar"), shardshuffle=False))
    assert [json.loads(s["json"]) for s in streamed] == records
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [(r["id"], r["k"]) for r in index] == [(r["id"], r["k"]) for r in records]
    assert [json.loads(r["record"]) for r in index] == records
    by_card = load_dataset(tmp_path, str(out))  # the card's data_files
    assert len(by_card) == len(records)


def test_parquet_files_read_as_images_with_their_records(run, tmp_path):
    import datasets

    out = tmp_path / "pq"
    assert export(run, "--to", "parquet", "--shard-size", "4", "-o", out).returncode == 0
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
    ]
    loaded = load_dataset(tmp_path, "parquet", data_files=str(out / "data" / "*.parquet"))
    assert isinstance(loaded.features["image"], datasets.Image)
    records = manifest(run)
    expected = pixels(run)
    assert [json.loads(r) for r in loaded["record"]] == records
    for row in loaded:
        assert row["prompt"] == json.loads(row["record"])["prompt"]
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), expected[(row["id"], row["k"])])
    assert len(load_dataset(tmp_path, str(out))) == len(records)


def test_a_changed_image_stops_the_export_and_leaves_nothing(run, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(run, changed)
    victim = changed / manifest(changed)[3]["file_name"]
    image = Image.open(victim).convert("RGB")
    image.putpixel((0, 0), (1, 2, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    victim.write_bytes(buffer.getvalue())
    result = export(changed, "--to", "webdataset", "-o", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"flux-batch-export: error: {victim}: its sha256 differs from manifest line 4: the file "
        "changed after it was written; nothing was exported"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changed"]  # no output, no partial


def test_a_killed_export_leaves_nothing_under_the_final_name(run, tmp_path):
    out = tmp_path / "wds"
    killed = export(
        run,
        "--to",
        "webdataset",
        "--shard-size",
        "2",
        "-o",
        out,
        env={"FLUX_BATCH_CRASH": "export_shard_written:2"},
    )
    assert killed.returncode == -9
    assert not out.exists() and (tmp_path / ".wds.partial").is_dir()
    assert export(run, "--to", "webdataset", "--shard-size", "2", "-o", out).returncode == 0
    assert not (tmp_path / ".wds.partial").exists()
    assert len(list((out / "shards").iterdir())) == 4
    again = export(run, "--to", "webdataset", "-o", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_run_another_process_is_still_writing_is_refused_and_nothing_written(cli):
    """The run's lock is held: its manifest lists only what is done so far, so exporting it
    would make a partial dataset whose card calls it complete."""
    write_prompts(cli.cwd / "p.jsonl", ROWS)
    live = cli.popen(
        "dataset.path=p.jsonl", "output.dir=live", *FAST, env={"FLUX_BATCH_CRASH": "manifest_appended:2:stop"}
    )  # paused, lock held
    run = cli.cwd / "live"
    try:
        wait_until_stopped(live)
        assert len(manifest(run)) == 2
        before = sorted(p.name for p in run.iterdir())
        result = export(run, "--to", "webdataset", "-o", cli.cwd / "out")
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"flux-batch-export: error: {run} is in use by another flux-batch process (lock file "
            f"{run / '.lock'}, held by pid {live.pid}); wait for it or stop it; nothing was exported"
        ]
        assert result.stdout == ""
        assert not (cli.cwd / "out").exists() and not (cli.cwd / ".out.partial").exists()
        assert sorted(p.name for p in run.iterdir()) == before  # no card, nothing else
    finally:
        live.kill()
        live.wait()
    assert export(run, "--to", "webdataset", "-o", cli.cwd / "out").returncode == 0  # its writer gone

"""`output.layout=webdataset`: the run writes tar shards itself, read by the `webdataset` library
and `datasets`' webdataset builder, indexed in Parquet, and resumable after a kill anywhere in
shard writing, with nothing lost, nothing twice and no sample rendered again that a shard or its
temporary file already holds."""

from __future__ import annotations

import glob
import io
import json
import random
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST, check_consistent, load_dataset, pixels, write_prompts

ROWS = [
    {"id": "fox", "prompt": "a red fox in the snow"},
    {"id": "boat.2", "prompt": "a sailing boat at sunset", "num_images": 2},  # a dot in the id
    {"id": "owl", "prompt": "an owl at night"},
    {"id": "cat", "prompt": "a cat on a sofa"},
]  # five items, plan positions 0..4
KEYS = {
    ("fox", 0): "000000000",
    ("boat.2", 0): "000000001",
    ("boat.2", 1): "000000002",
    ("owl", 0): "000000003",
    ("cat", 0): "000000004",
}
WDS = ("output.layout=webdataset", "output.shard_size=2")


def tar_samples(run_dir: Path) -> dict[str, list[tuple[str, int]]]:
    """{tar file name: the (id, k) of its samples}, read from every complete shard's json
    members with the standard library."""
    found = {}
    for path in sorted((run_dir / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            found[path.name] = [
                (r["id"], r["k"])
                for r in (json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json"))
            ]
    return found


def check_finished(run_dir: Path, reference: dict) -> None:
    """Every item exactly once across the complete shards and the manifest, every sample in
    the index, nothing temporary left, the clean run's pixels."""
    records = check_consistent(run_dir)
    keys = [(r["id"], r["k"]) for r in records]
    assert sorted(keys) == sorted(reference), "the manifest does not list every item once"
    in_tars = [key for keys_ in tar_samples(run_dir).values() for key in keys_]
    assert sorted(in_tars) == sorted(reference), "the shards do not hold every item once"
    assert not list((run_dir / "shards").glob(".*")), "temporary shards left behind"
    index = read_index(run_dir)
    assert sorted((r["id"], r["k"], r["shard"], r["key"]) for r in index) == sorted(
        (r["id"], r["k"], r["shard"], r["key"]) for r in records
    )
    got = pixels(run_dir)
    for key, expected in reference.items():
        assert np.array_equal(got[key], expected), f"{key}: pixels differ from the clean run"


def read_index(run_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in sorted((run_dir / "index").glob("*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return [{**json.loads(r["record"]), "index_key": r["key"], "index_shard": r["shard"]} for r in rows]


@pytest.fixture(scope="module")
def job(tmp_path_factory, cli_server):
    """The prompt file and the pixels of one clean run in the flat layout."""
    cwd = tmp_path_factory.mktemp("wds")
    prompts = write_prompts(cwd / "p.jsonl", ROWS)
    result = cli_server(cwd, f"dataset.path={prompts}", "output.dir=flat", *FAST)
    assert result.returncode == 0, result.stdout
    return cwd, (f"dataset.path={prompts}", *WDS, *FAST), pixels(cwd / "flat")


def test_tar_shards_are_read_by_webdataset_and_datasets(job, cli_server):
    import webdataset

    cwd, args, reference = job
    result = cli_server(cwd, *args, "output.dir=run")
    assert "rendered 5, skipped 0" in result.stdout
    run = cwd / "run"
    records = check_consistent(run)
    assert tar_samples(run) == {
        "000000.tar": [("fox", 0), ("boat.2", 0)],
        "000001.tar": [("boat.2", 1), ("owl", 0)],
        "000002.tar": [("cat", 0)],
    }
    for r in records:  # the manifest says which shard holds each item, and under which key
        assert r["key"] == KEYS[(r["id"], r["k"])]
        assert r["file_name"] == f"{r['shard']}/{r['key']}.png"
    by_key = {r["key"]: r for r in records}

    urls = sorted(glob.glob(str(run / "shards" / "*.tar")))
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == sorted(by_key)
    for s in samples:
        assert json.loads(s["json"]) == by_key[s["__key__"]]
        assert s["txt"].decode() == by_key[s["__key__"]]["prompt"]
        assert Image.open(io.BytesIO(s["png"])).size == (32, 32)

    loaded = load_dataset(cwd, "webdataset", data_files={"train": urls})
    assert sorted(row["json"]["id"] for row in loaded) == sorted(r["id"] for r in records)
    assert {row["__key__"]: row["txt"] for row in loaded} == {k: r["prompt"] for k, r in by_key.items()}

    index = read_index(run)  # one Parquet file per shard, every sample with its record
    assert sorted(p.name for p in (run / "index").iterdir()) == [
        "000000.parquet",
        "000001.parquet",
        "000002.parquet",
    ]
    assert {
        r["index_key"]: {k: v for k, v in r.items() if not k.startswith("index_")} for r in index
    } == by_key
    card = (run / "README.md").read_text()
    assert '"shards/*.tar"' in card and "webdataset, 2 samples per tar" in card
    assert pixels(run).keys() == reference.keys()
    assert all(np.array_equal(pixels(run)[k], reference[k]) for k in reference)  # same pixels as flat

    again = cli_server(cwd, *args, "output.dir=run")
    assert "nothing to do, all 5 items already done" in again.stdout


def test_a_limited_run_then_the_whole_one_adds_shards_and_renders_nothing_twice(job, cli_server):
    cwd, args, reference = job
    assert cli_server(cwd, *args, "output.dir=limited", "limit=3").returncode == 0
    assert tar_samples(cwd / "limited") == {
        "000000.tar": [("fox", 0), ("boat.2", 0)],
        "000001.tar": [("boat.2", 1)],
    }  # closed at the end
    whole = cli_server(cwd, *args, "output.dir=limited")
    assert "rendered 2, skipped 3 already done" in whole.stdout
    assert tar_samples(cwd / "limited")["000002.tar"] == [("owl", 0), ("cat", 0)]
    check_finished(cwd / "limited", reference)


# (crash point, hit, what the first run left, and how many of the five items the resumed run
# must render: fewer than five means it recovered whole samples instead of rendering them again)
KILLS = [
    ("mid_tar_write", 2, "half of the second sample in the temporary tar", 4),
    ("sample_added", 3, "one complete shard, one sample in the next temporary tar", 2),
    ("shard_sealed", 1, "a complete temporary tar, not renamed", 3),
    ("shard_renamed", 1, "a shard in place, none of its samples listed", 3),
    ("mid_append", 1, "a shard in place, its listing torn", 3),
    ("shard_listed", 1, "a shard in place and listed, its index not written", 3),
]


def member_data_offset(tar: Path, member: str) -> int:
    with tarfile.open(tar) as archive:
        return archive.getmember(member).offset_data


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_changed_tar_of_a_finished_run_renders_exactly_its_lost_samples_again(job, cli_server, damage):
    """A complete tar changed after the run finished (cut short, or a member's bytes replaced
    keeping its size): the next start notices, keeps the tar's whole samples, renders the lost
    one again with the same pixels, and the run after that has nothing to do."""
    cwd, args, reference = job
    run = (*args, f"output.dir={damage}")
    assert cli_server(cwd, *run).returncode == 0
    tar = cwd / damage / "shards" / "000001.tar"  # boat.2 (k=1) then owl
    if damage == "truncated":  # cut inside owl's image: boat.2's sample stays whole
        lost = ("owl", 0)
        with open(tar, "r+b") as f:
            f.truncate(member_data_offset(tar, "000000003.png") + 10)
    else:  # boat.2's image: as long as before, other bytes
        lost = ("boat.2", 1)
        offset = member_data_offset(tar, "000000002.png") + 40
        with open(tar, "r+b") as f:
            f.seek(offset)
            original = f.read(8)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in original))

    resumed = cli_server(cwd, *run)
    assert resumed.returncode == 0, resumed.stdout
    assert (
        "shards/000001.tar changed after it was written: 1 of its samples are gone or "
        "damaged and render again"
    ) in resumed.stdout
    assert "rendered 1, skipped 4 already done" in resumed.stdout
    kept = [key for key in [("boat.2", 1), ("owl", 0)] if key != lost]
    assert tar_samples(cwd / damage)["000001.tar"] == kept  # rewritten with its whole sample
    assert tar_samples(cwd / damage)["000003.tar"] == [lost]  # the lost one, rendered again
    check_finished(cwd / damage, reference)
    assert "nothing to do, all 5 items already done" in cli_server(cwd, *run).stdout


@pytest.mark.parametrize("point, hit, left, rendered", KILLS, ids=[k[0] for k in KILLS])
def test_killed_inside_shard_writing_then_resumed(job, cli_server, point, hit, left, rendered):
    cwd, args, reference = job
    run = (*args, f"output.dir=kill-{point}")
    killed = cli_server(cwd, *run, env={"FLUX_BATCH_CRASH": f"{point}:{hit}"})
    assert killed.returncode == -9, f"{point}:{hit} did not kill: {killed.stdout}"
    run_dir = cwd / f"kill-{point}"
    check_consistent(run_dir)  # what a reader sees meanwhile: every listed sample is in a tar
    for path in (run_dir / "shards").glob("*.tar"):  # a tar in place is always complete
        with tarfile.open(path) as tar:
            assert len(tar.getmembers()) % 3 == 0

    resumed = cli_server(cwd, *run)
    assert resumed.returncode == 0, resumed.stdout
    assert f"rendered {rendered}, skipped {5 - rendered} already done" in resumed.stdout, left
    check_finished(run_dir, reference)


def test_killed_at_random_moments_then_resumed(job, cli_server):
    """Timed kills land where no crash point is: a run is killed after a random share of a clean
    run's time, then resumed, until it finishes; fresh runs until two kills have landed."""
    cwd, args, reference = job
    rng = random.Random(7)
    started = time.monotonic()
    assert cli_server(cwd, *args, "output.dir=timing").returncode == 0
    full_run = time.monotonic() - started
    kills, rounds = 0, 0
    while kills < 2:
        rounds += 1
        assert rounds <= 10, "no timed kill landed in ten runs"
        run_dir = cwd / f"random-{rounds}"
        for attempt in range(40):  # a window that widens with each try, so a slow moment finishes
            result = cli_server(
                cwd,
                *args,
                f"output.dir={run_dir}",
                kill_after=rng.uniform(0.05, full_run * (0.9 + attempt / 5)),
            )
            if result.returncode == 0:
                break
            assert result.returncode == -9, result.stdout
            kills += 1
            check_consistent(run_dir)
        else:
            pytest.fail("a run never finished between kills")
        check_finished(run_dir, reference)


def test_two_ranks_and_two_shards_write_their_own_tars(job, cli, cli_server):
    from test_ranks import launch

    cwd, args, reference = job
    ranks = launch(cli, 2, *args, f"output.dir={cwd / 'ranks'}")
    assert ranks.returncode == 0, ranks.stderr
    assert tar_samples(cwd / "ranks") == {  # rank 0: plan items 0, 2, 4; rank 1: 1, 3
        "rank-0-000000.tar": [("fox", 0), ("boat.2", 1)],
        "rank-0-000001.tar": [("cat", 0)],
        "rank-1-000000.tar": [("boat.2", 0), ("owl", 0)],
    }
    check_finished(cwd / "ranks", reference)

    for shard in (0, 1):
        result = cli_server(cwd, *args, "output.dir=shards", "runtime.num_shards=2", f"runtime.shard={shard}")
        assert result.returncode == 0, result.stdout
    assert sorted(tar_samples(cwd / "shards")) == [
        "shard-0-000000.tar",
        "shard-0-000001.tar",
        "shard-1-000000.tar",
    ]
    check_finished(cwd / "shards", reference)


def test_bad_input_for_the_webdataset_layout_writes_nothing(job, cli_server, tmp_path):
    cwd, args, _ = job
    flat = tmp_path / "flat-run"
    assert cli_server(cwd, args[0], *FAST, f"output.dir={flat}").returncode == 0
    before = sorted(p.name for p in flat.iterdir())
    switched = cli_server(cwd, *args, f"output.dir={flat}")
    assert switched.returncode == 2 and "output.layout (None -> 'webdataset')" in switched.stdout
    assert sorted(p.name for p in flat.iterdir()) == before  # no shards/, no index/

    keyed = write_prompts(tmp_path / "keyed.jsonl", [{"prompt": "a fox", "key": "k1"}])
    refused = cli_server(cwd, f"dataset.path={keyed}", *WDS, *FAST, f"output.dir={tmp_path / 'keyed'}")
    assert refused.returncode == 2
    assert f"{keyed}:1: column 'key' would overwrite the manifest field" in refused.stdout
    assert [
        p.name
        for p in (tmp_path / "keyed").rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name != "flux-batch.log"
    ] == []  # Hydra's own only


def test_export_reads_a_webdataset_run(job, cli_server):
    from flux_batch.export.cli import main as export_main

    cwd, args, reference = job
    assert cli_server(cwd, *args, "output.dir=to-export").returncode == 0
    export_main([str(cwd / "to-export"), "--to", "parquet", "-o", str(cwd / "exported")])
    loaded = load_dataset(cwd, "parquet", data_files=str(cwd / "exported" / "data" / "*.parquet"))
    got = {(row["id"], row["k"]): np.asarray(row["image"].convert("RGB")) for row in loaded}
    assert got.keys() == reference.keys()
    assert all(np.array_equal(got[k], reference[k]) for k in reference)


def test_a_torn_temporary_tar_yields_exactly_its_whole_samples(tmp_path):
    """Cut a shard at every 512-byte block: the reader recovers the samples before the cut,
    never a torn one, never an error."""
    import hashlib

    from flux_batch.store.layouts.tars import Sample, sample_bytes, whole_samples

    samples = []
    for n in range(3):
        image = bytes(range(256)) * (n + 3)
        record = {"id": f"i{n}", "k": 0, "sha256": hashlib.sha256(image).hexdigest()}
        samples.append(Sample(f"{n:09d}", "png", image, record, f"prompt {n}"))
    pieces = [sample_bytes(s, s.record) for s in samples]
    data = b"".join(pieces)
    # a sample is whole once its last member's data is there (the padding after it may be torn)
    ends = np.cumsum([len(p) for p in pieces]) - [-len(s.prompt) % 512 for s in samples]
    for cut in range(0, len(data) + 1, 256):
        whole = int((ends <= cut).sum())
        found = list(whole_samples(io.BytesIO(data[:cut])))
        assert [s.record["id"] for s in found] == [f"i{n}" for n in range(whole)], cut
        assert all(s.image == samples[i].image and s.prompt == f"prompt {i}" for i, s in enumerate(found))
    damaged = bytearray(data)
    damaged[len(pieces[0]) + 512 + 100] ^= (
        0xFF  # a flipped byte in the second image: its sha256 no longer matches
    )
    assert [s.record["id"] for s in whole_samples(io.BytesIO(bytes(damaged)))] == ["i0", "i2"]

"""An edit's input images travel with its output through every layout, `flux-batch-export` and
`flux-batch-grid`, so a before/after dataset loads in `datasets` and `webdataset`: flat and
sharded runs keep each input once in `inputs/` (imagefolder's `input` column), tar shards keep
a copy in each sample (`<key>.input.png`), crash-safely as images are."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import check_consistent, load_dataset, manifest, pixels, script, write_prompts
from flux_batch.plan.inputs import to_rgb

SMALL = ("sampler.steps=2", "runtime.progress=false", "model=tiny-kontext")
WDS = ("output.layout=webdataset", "output.shard_size=2")
COLOURS = {"in0.png": "red", "in1.png": "blue"}
ROWS = [  # auto ids: each hashes its prompt and input's bytes
    {"prompt": "make it blue", "image": "in0.png"},
    {"prompt": "make it red", "image": "in1.png", "num_images": 2},
    {"prompt": "make it green", "image": "in0.png"},  # the same input as the first row
]
ITEMS = 4
INPUT_OF_ITEM = ["in0.png", "in1.png", "in1.png", "in0.png"]  # in plan order


def draw(path: Path, colour: str, size=(64, 64)) -> Path:
    """A coloured disc on grey: inputs that differ from each other."""
    image = Image.new("RGB", size, "lightgray")
    ImageDraw.Draw(image).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=colour)
    image.save(path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rgb(data: bytes) -> np.ndarray:
    return np.asarray(to_rgb(Image.open(io.BytesIO(data))))


@pytest.fixture(scope="module")
def job(tmp_path_factory, cli_server):
    """The prompt file (two inputs, one shared by two rows) and the pixels of a clean flat run."""
    cwd = tmp_path_factory.mktemp("inputs")
    for name, colour in COLOURS.items():
        draw(cwd / name, colour)
    prompts = write_prompts(cwd / "edits.jsonl", ROWS)
    result = cli_server(cwd, f"dataset.path={prompts}", "output.dir=flat", *SMALL)
    assert result.returncode == 0, result.stdout
    return cwd, (f"dataset.path={prompts}", *SMALL), pixels(cwd / "flat")


def input_of(cwd: Path, prompt: str) -> Path:
    return cwd / next(row["image"] for row in ROWS if row["prompt"] == prompt)


@pytest.mark.parametrize("layout", ["flat", "sharded"])
def test_a_folder_run_keeps_each_input_once_and_loads_as_before_after_pairs(job, cli_server, layout):
    cwd, args, reference = job
    run = cwd / "flat" if layout == "flat" else cwd / "sharded"
    if layout == "sharded":
        result = cli_server(cwd, *args, "output.dir=sharded", "output.layout=sharded", "output.shard_size=2")
        assert result.returncode == 0, result.stdout
    records = check_consistent(run)
    copies = {name: f"inputs/{sha(cwd / name)}.png" for name in COLOURS}
    assert sorted(p.name for p in (run / "inputs").iterdir()) == sorted(Path(c).name for c in copies.values())
    for name, copy in copies.items():  # the input's own bytes, once however many items use it
        assert (run / copy).read_bytes() == (cwd / name).read_bytes()
    for record in records:
        source = input_of(cwd, record["prompt"])
        copy = copies[source.name]
        assert record["input_file_name"] == copy
        assert record["inputs"] == [{"path": source.name, "sha256": sha(source), "copy": copy}]
        assert list(record)[-3:] == ["inputs", "input_file_name", "sha256"]

    by_folder = load_dataset(cwd / layout, "imagefolder", data_dir=str(run))
    by_card = load_dataset(cwd / layout, str(run))  # README.md's configs name inputs/* too
    for loaded in (by_folder, by_card):
        assert len(loaded) == 4
        for row in loaded:
            key = (row["id"], row["k"])
            assert np.array_equal(np.asarray(row["image"].convert("RGB")), reference[key])
            assert np.array_equal(
                np.asarray(row["input"].convert("RGB")), rgb(input_of(cwd, row["prompt"]).read_bytes())
            )
    card = (run / "README.md").read_text()
    assert '"inputs/*"' in card and "- image-to-image" in card and "`input` image column" in card


def test_a_run_mixing_rows_with_and_without_inputs_loads_with_an_empty_input(tmp_path, cli_server):
    draw(tmp_path / "in0.png", "red")
    rows = [{"prompt": "a plain cat"}, {"prompt": "make it blue", "image": "in0.png"}]
    prompts = write_prompts(tmp_path / "p.jsonl", rows)
    result = cli_server(tmp_path, f"dataset.path={prompts}", "output.dir=run", *SMALL)
    assert result.returncode == 0, result.stdout
    loaded = {
        row["prompt"]: row for row in load_dataset(tmp_path, "imagefolder", data_dir=str(tmp_path / "run"))
    }
    assert loaded["a plain cat"]["input"] is None and loaded["a plain cat"]["inputs"] is None
    assert np.array_equal(
        np.asarray(loaded["make it blue"]["input"]), rgb((tmp_path / "in0.png").read_bytes())
    )


def test_webdataset_samples_carry_their_input_and_load_in_both_libraries(job, cli_server):
    import webdataset

    cwd, args, reference = job
    assert cli_server(cwd, *args, *WDS, "output.dir=wds").returncode == 0
    run = cwd / "wds"
    records = check_consistent(run)
    assert not (run / "inputs").exists()  # in the samples themselves
    by_key = {r["key"]: r for r in records}
    for r in records:
        assert r["input_file_name"] == f"{r['shard']}/{r['key']}.input.png" == r["inputs"][0]["copy"]
    with tarfile.open(run / "shards" / "000000.tar") as tar:
        assert tar.getnames() == [
            f"{key}.{member}"
            for key in ("000000000", "000000001")
            for member in ("png", "input.png", "json", "txt")
        ]

    urls = sorted(glob.glob(str(run / "shards" / "*.tar")))
    streamed = list(webdataset.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in streamed] == sorted(by_key)
    for s in streamed:
        record = json.loads(s["json"])
        key = (record["id"], record["k"])
        assert s["input.png"] == input_of(cwd, record["prompt"]).read_bytes()
        assert np.array_equal(rgb(s["png"]), reference[key])

    loaded = load_dataset(cwd / "wds-hf", "webdataset", data_files={"train": urls})
    for row in loaded:
        key = (row["json"]["id"], row["json"]["k"])
        assert np.array_equal(np.asarray(row["png"].convert("RGB")), reference[key])
        assert np.array_equal(
            np.asarray(row["input.png"].convert("RGB")),
            rgb(input_of(cwd, row["json"]["prompt"]).read_bytes()),
        )
    assert "`<key>.input.png`" in (run / "README.md").read_text()


# one run each, in order, on one run directory: (crash point, what the manifest lists after it,
# what that start recovered from the temporary tar the kill before it left)
KILLS = [
    ("sample_added:1", 0, None),  # a temporary tar holding one whole sample
    ("mid_tar_write:2", 1, "recovered 1 whole samples"),  # its sample copied, then a torn one
    ("shard_sealed:1", 1, None),  # the torn sample dropped; two whole ones sealed, not renamed
    ("shard_renamed:2", 3, "recovered 2 whole samples"),  # those copied, then a tar not listed
]


def test_a_webdataset_run_killed_anywhere_resumes_with_each_input_once_per_sample(job, cli_server):
    """Kills inside shard writing, one after another on one run, then a clean finish: every item
    once, its sample holding its input once; recovered samples keep their inputs, a torn
    sample's input is never trusted."""
    cwd, args, reference = job
    run = (*args, *WDS, "output.dir=killed", "batch_size=1", "runtime.writers=0")
    for fault, listed, recovered in KILLS:
        killed = cli_server(cwd, *run, env={"FLUX_BATCH_CRASH": fault})
        assert killed.returncode == -9, f"{fault} did not kill: {killed.stdout}"
        assert len(check_consistent(cwd / "killed")) == listed, fault
        assert recovered is None or recovered in killed.stdout, killed.stdout
    resumed = cli_server(cwd, *run)
    assert resumed.returncode == 0, resumed.stdout
    assert "listing 1 samples a kill left out of the manifest" in resumed.stdout
    run_dir = cwd / "killed"
    records = check_consistent(run_dir)
    assert sorted((r["id"], r["k"]) for r in records) == sorted(reference)
    members = []
    for path in sorted((run_dir / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                members.append(member.name)
                if member.name.endswith(".input.png"):
                    record = json.load(tar.extractfile(member.name.replace(".input.png", ".json")))
                    data = tar.extractfile(member).read()
                    assert data == input_of(cwd, record["prompt"]).read_bytes()
    assert len([m for m in members if m.endswith(".input.png")]) == ITEMS
    assert len(members) == len(set(members)) == 4 * ITEMS  # nothing twice
    assert not list((run_dir / "shards").glob(".*")), "temporary shards left behind"
    got = pixels(run_dir)
    assert all(np.array_equal(got[key], reference[key]) for key in reference)


def test_a_folder_run_killed_while_copying_an_input_leaves_no_trusted_half(job, cli_server):
    cwd, args, reference = job
    run = (*args, "output.dir=copykill", "runtime.writers=0")
    killed = cli_server(cwd, *run, env={"FLUX_BATCH_CRASH": "mid_image_write:1"})  # the first input's copy
    assert killed.returncode == -9
    assert [p.name for p in (cwd / "copykill" / "inputs").iterdir()][0].endswith(".tmp")
    assert manifest(cwd / "copykill") == []
    assert cli_server(cwd, *run).returncode == 0
    run_dir = cwd / "copykill"
    assert sorted(p.name for p in (run_dir / "inputs").iterdir()) == sorted(
        f"{sha(cwd / name)}.png" for name in COLOURS
    )
    assert not list(run_dir.rglob("*.tmp"))
    assert pixels(run_dir).keys() == reference.keys()


def export(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [script("flux-batch-export"), *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("source", ["flat", "wds"])
def test_export_carries_the_inputs_to_webdataset_and_parquet(job, cli_server, source, tmp_path):
    import datasets
    import webdataset

    cwd, args, reference = job
    if not (cwd / source).exists():
        assert cli_server(cwd, *args, *WDS, f"output.dir={source}").returncode == 0
    run = cwd / source
    records = manifest(run)

    out = tmp_path / "wds"
    result = export(run, "--to", "webdataset", "--shard-size", "3", "-o", out)
    assert result.returncode == 0, result.stderr
    streamed = list(
        webdataset.WebDataset(sorted(glob.glob(str(out / "shards" / "*.tar"))), shardshuffle=False)
    )
    assert [json.loads(s["json"]) for s in streamed] == records
    for s in streamed:
        record = json.loads(s["json"])
        assert s["input.png"] == input_of(cwd, record["prompt"]).read_bytes()
    assert "`<key>.input.png`" in (out / "README.md").read_text()

    out = tmp_path / "pq"
    result = export(run, "--to", "parquet", "-o", out)
    assert result.returncode == 0, result.stderr
    loaded = load_dataset(tmp_path, "parquet", data_files=str(out / "data" / "*.parquet"))
    assert isinstance(loaded.features["input"], datasets.Image)
    for row in loaded:
        key = (row["id"], row["k"])
        assert np.array_equal(np.asarray(row["image"].convert("RGB")), reference[key])
        assert np.array_equal(
            np.asarray(row["input"].convert("RGB")), rgb(input_of(cwd, row["prompt"]).read_bytes())
        )
    assert "`input`" in (out / "README.md").read_text()


def test_several_inputs_are_input_input_1_in_every_form(tmp_path, cli_server):
    """FLUX.2 [klein] takes several inputs: members `.input.png`, `.input_1.jpg`, columns
    `input`, `input_1`; a row with one input leaves `input_1` empty."""
    import datasets

    draw(tmp_path / "one.png", "red")
    Image.open(draw(tmp_path / "two.png", "blue")).save(tmp_path / "two.jpg", quality=95)
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [
            {"id": "both", "prompt": "put them together", "image": ["one.png", "two.jpg"]},
            {"id": "one", "prompt": "make it blue", "image": "one.png"},
        ],
    )
    base = (f"dataset.path={prompts}", "sampler.steps=1", "runtime.progress=false", "model=tiny-klein")
    assert cli_server(tmp_path, *base, *WDS, "output.dir=run").returncode == 0
    with tarfile.open(tmp_path / "run" / "shards" / "000000.tar") as tar:
        names = tar.getnames()
        assert names[:4] == [
            "000000000.png",
            "000000000.input.png",
            "000000000.input_1.jpg",
            "000000000.json",
        ]
        assert tar.extractfile("000000000.input_1.jpg").read() == (tmp_path / "two.jpg").read_bytes()
    record = manifest(tmp_path / "run")[0]
    assert [i["copy"] for i in record["inputs"]] == [
        "shards/000000.tar/000000000.input.png",
        "shards/000000.tar/000000000.input_1.jpg",
    ]
    out = tmp_path / "pq"
    assert export(tmp_path / "run", "--to", "parquet", "-o", out).returncode == 0
    loaded = load_dataset(tmp_path, "parquet", data_files=str(out / "data" / "*.parquet"))
    assert isinstance(loaded.features["input_1"], datasets.Image)
    both, one = sorted(loaded, key=lambda row: row["prompt"] != "put them together")
    assert np.array_equal(np.asarray(both["input"]), rgb((tmp_path / "one.png").read_bytes()))
    assert np.array_equal(np.asarray(both["input_1"]), rgb((tmp_path / "two.jpg").read_bytes()))
    assert one["input_1"] is None
    assert np.array_equal(np.asarray(one["input"]), rgb((tmp_path / "one.png").read_bytes()))


def test_the_grid_shows_each_input_beside_its_outputs(job, cli_server, tmp_path):
    cwd, _, _ = job
    prompts = cwd / "edits.jsonl"
    result = cli_server(
        cwd, "-m", f"dataset.path={prompts}", "sampler.steps=1,2", "hydra.sweep.dir=sweep", *SMALL[1:]
    )
    assert result.returncode == 0, result.stdout
    out = tmp_path / "g.png"
    drawn = subprocess.run(
        [script("flux-batch-grid"), str(cwd / "sweep"), "-o", str(out), "--cell", "48", "--html"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drawn.returncode == 0, drawn.stderr
    image = Image.open(out)
    info = json.loads(image.info["flux_batch_grid"])
    image = image.convert("RGB")
    assert info["cols"] == [["input"], ["steps=1"], ["steps=2"]]
    inputs = [c for c in info["cells"] if c["col"] == 0]
    assert len(inputs) == 4 and len(info["cells"]) == 12
    for cell in inputs:
        x, y, w, h = cell["box"]
        source = cwd / INPUT_OF_ITEM[cell["row"]]
        expected = to_rgb(Image.open(source)).resize((48, 48), Image.Resampling.LANCZOS)
        assert (w, h) == (48, 48)
        assert np.array_equal(np.asarray(image.crop((x, y, x + w, y + h))), np.asarray(expected))

    # the gallery page: an input column first, each row's input linked to the run's copy of it
    page = (tmp_path / "index.html").read_text()
    images = page.split("<h2>Manifest</h2>")[0]
    assert re.findall(r"<th>([^<]*)</th>", images)[:2] == ["prompt", "input"]
    rows = images.split("<tr>")[2:]
    assert len(rows) == 4
    for row, name in zip(rows, INPUT_OF_ITEM):
        first = re.search(r"<img src='([^']+)'", row)[1]
        assert sha(tmp_path / first) == sha(cwd / name)

    transposed = tmp_path / "t.png"
    drawn = subprocess.run(
        [script("flux-batch-grid"), str(cwd / "sweep"), "-o", str(transposed), "--rows", "job"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert drawn.returncode == 0, drawn.stderr
    assert json.loads(Image.open(transposed).info["flux_batch_grid"])["rows"][0] == ["input"]

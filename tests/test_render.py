"""End to end through the installed CLI (on the tiny model, but for the quickstart on the
default demo model): outputs, metadata, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PROMPTS, manifest, pixels, write_prompts
from flux_batch.demo import VERSION as DEMO_VERSION

MANIFEST_KEYS = {
    "file_name",
    "id",
    "k",
    "prompt",
    "seed",
    "width",
    "height",
    "steps",
    "guidance",
    "model",
    "quant",
    "sha256",
}


def run_dir_of(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1].split(":")[0])


def test_quickstart_renders_the_shipped_example_on_the_demo_model(cli):
    # a bare `flux-batch`, from a folder with no prompt file of its own, offline
    result = cli(model=None)
    run_dir = run_dir_of(result)
    assert re.fullmatch(r"example-demo-q8_0-[0-9a-f]{8}", run_dir.name)
    assert run_dir.parent == cli.cwd / "outputs"
    assert "rendered 6, skipped 0 already done, failed 0" in result.stdout
    records = manifest(run_dir)
    assert [r["id"] for r in records] == [
        "red-circle",
        "blue-triangle",
        "green-square",
        "yellow-circle",
        "purple-triangle",
        "orange-square",
    ]
    for record in records:
        assert MANIFEST_KEYS <= set(record)
        data = (run_dir / record["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        assert (record["width"], record["height"], record["steps"]) == (64, 64, 12)
        assert (record["model"], record["quant"]) == ("demo", "q8_0")
    assert records[3]["category"] == "position"  # extra columns are carried
    assert records[5]["seed"] == 1234  # a row's own seed
    # the prompts reach the pictures: read them back (chance: colour 1 in 6, shape 1 in 3,
    # position 1 in 5); one shape may slip, as 92% of the evaluation set's are right
    from flux_batch.demo.scoring import read
    from flux_batch.demo.shapes import parse

    drawn = [read(image) for image in pixels(run_dir).values()]
    asked = [parse(r["prompt"]) for r in records]
    assert all(d.colour == a.colour for d, a in zip(drawn, asked)), (drawn, asked)
    assert sum(d.shape == a.shape for d, a in zip(drawn, asked)) >= 5, (drawn, asked)
    assert all(d.position == a.position for d, a in zip(drawn, asked) if a.position), (drawn, asked)

    info = json.loads((run_dir / "run.json").read_text())
    assert set(info) >= {"fingerprint", "settings", "config", "versions"}
    assert info["settings"]["sampler"]["steps"] == 12
    assert info["settings"]["model"]["builder"] == DEMO_VERSION
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_png_carries_infotext_and_record(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "cat", "prompt": "a cat, oil on canvas"}])
    run_dir = run_dir_of(cli(f"dataset.path={prompts}", "sampler.guidance=2.5"))
    record = manifest(run_dir)[0]
    image = Image.open(run_dir / record["file_name"])
    assert image.size == (64, 64)
    assert image.info["parameters"] == (
        "a cat, oil on canvas\nSteps: 4, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5, "
        f"Seed: {record['seed']}, Size: 64x64, Model hash: {record['model_sha256'][:10]}, "
        "Model: transformer-Q8_0"
    )
    embedded = json.loads(image.info["flux_batch"])
    assert embedded == {k: v for k, v in record.items() if k != "sha256"}


@pytest.mark.parametrize("fmt", ["webp", "jpg"])
def test_lossy_formats_carry_infotext(cli, tmp_path, fmt):
    from flux_batch.store.images import read_parameters

    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "cat", "prompt": "a cat"}])
    run_dir = run_dir_of(cli(f"dataset.path={prompts}", f"output.format={fmt}"))
    record = manifest(run_dir)[0]
    assert record["file_name"] == f"images/cat.{fmt}"
    assert Image.open(run_dir / record["file_name"]).format == {"webp": "WEBP", "jpg": "JPEG"}[fmt]
    assert read_parameters(run_dir / record["file_name"]).startswith("a cat\nSteps: 4,")


def test_num_images_names_files_by_k(cli, tmp_path):
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [{"id": "cat", "prompt": "a cat"}, {"id": "dog", "prompt": "a dog", "num_images": 1}],
    )
    run_dir = run_dir_of(cli(f"dataset.path={prompts}", "num_images=3"))
    names = sorted(r["file_name"] for r in manifest(run_dir))
    assert names == ["images/cat_0.png", "images/cat_1.png", "images/cat_2.png", "images/dog.png"]
    seeds = [r["seed"] for r in manifest(run_dir) if r["id"] == "cat"]
    assert len(set(seeds)) == 3


def test_run_dir_loads_as_an_imagefolder_dataset(cli, tmp_path):
    datasets = pytest.importorskip("datasets")
    run_dir = run_dir_of(cli())
    ds = datasets.load_dataset("imagefolder", data_dir=str(run_dir), split="train")
    assert len(ds) == 6
    assert {"image", "id", "prompt", "seed", "sha256", "category"} <= set(ds.column_names)
    by_id = {row["id"]: row for row in ds}
    assert by_id["yellow-circle"]["category"] == "position"
    assert by_id["red-circle"]["image"].size == (64, 64)


# --- determinism: same item, same pixels, however it is batched, ordered, limited, resumed ---


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_cache):
    """PROMPTS rendered once with batch_size=1: the pixels every other schedule must match."""
    from conftest import Cli

    cwd = tmp_path_factory.mktemp("reference")
    prompts = write_prompts(cwd / "prompts.jsonl", PROMPTS)
    Cli(cwd, model_cache)(f"dataset.path={prompts}", "output.dir=ref")
    return pixels(cwd / "ref")


def assert_same_pixels(got: dict, expected: dict, tolerance: int = 0) -> None:
    assert set(got) == set(expected)
    for key in expected:
        diff = np.abs(got[key].astype(int) - expected[key].astype(int)).max()
        assert diff <= tolerance, f"{key}: pixels differ by up to {diff}/255"


def test_reference_covers_every_row(reference):
    assert len(reference) == 8  # 7 rows, one with num_images=2
    sizes = {key: image.shape for key, image in reference.items()}
    assert sizes[("tall", 0)] == (80, 48, 3)


def test_reversed_file_order_gives_identical_pixels(cli, reference):
    # The two identical "a castle on a hill" rows swap places, and so swap their ids
    # (`<hash>` and `<hash>-2` go in file order); being identical, each id keeps its pixels.
    prompts = write_prompts(cli.cwd / "prompts.jsonl", PROMPTS[::-1])
    cli(f"dataset.path={prompts}", "output.dir=rev")
    assert_same_pixels(pixels(cli.cwd / "rev"), reference)


def test_limit_then_resume_gives_identical_pixels(cli, reference):
    prompts = write_prompts(cli.cwd / "prompts.jsonl", PROMPTS)
    first = cli(f"dataset.path={prompts}", "output.dir=run", "limit=3")
    assert "rendered 3," in first.stdout
    second = cli(f"dataset.path={prompts}", "output.dir=run")
    assert "rendered 5, skipped 3 already done" in second.stdout
    assert_same_pixels(pixels(cli.cwd / "run"), reference)


def test_batch_of_three_stays_within_the_documented_tolerance(cli, reference):
    prompts = write_prompts(cli.cwd / "prompts.jsonl", PROMPTS)
    cli(f"dataset.path={prompts}", "output.dir=b3", "batch_size=3")
    # DESIGN.md: across batch sizes kernels differ; at most 2/255 on a CPU in float32
    assert_same_pixels(pixels(cli.cwd / "b3"), reference, tolerance=2)


def test_resume_after_a_kill_between_image_and_manifest(cli, reference):
    prompts = write_prompts(cli.cwd / "prompts.jsonl", PROMPTS)
    args = (f"dataset.path={prompts}", "output.dir=killed")
    crashed = cli(*args, check=False, env={"FLUX_BATCH_CRASH": "image_written:4"})
    assert crashed.returncode == -9
    records = manifest(cli.cwd / "killed")
    assert len(records) == 3  # the 4th image reached disk, its manifest line did not
    orphan_count = len(list((cli.cwd / "killed" / "images").iterdir()))
    assert orphan_count == 4
    resumed = cli(*args)
    assert "rendered 5, skipped 3 already done" in resumed.stdout
    records = manifest(cli.cwd / "killed")
    keys = [(r["id"], r["k"]) for r in records]
    assert len(keys) == len(set(keys)) == 8
    assert len(list((cli.cwd / "killed" / "images").iterdir())) == 8
    assert_same_pixels(pixels(cli.cwd / "killed"), reference)


def test_a_finished_run_exits_at_once_without_loading_the_model(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    cli(f"dataset.path={prompts}")
    again = cli(f"dataset.path={prompts}")
    assert "nothing to do, all 2 items already done" in again.stdout
    assert "loading transformer" not in again.stdout + again.stderr

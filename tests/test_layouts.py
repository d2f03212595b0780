"""Run directories shaped for datasets: the sharded layout (at most shard_size images per
folder), caption files, and the dataset card, through the real CLI."""

from __future__ import annotations

import pytest

from conftest import FAST, check_consistent, load_dataset, manifest, write_prompts

ROWS = [
    {"id": "fox", "prompt": "a red fox in the snow"},
    {"id": "boat", "prompt": "a sailing boat at sunset", "num_images": 2},
    {"id": "owl", "prompt": "an owl at night"},
    {"id": "cat", "prompt": "a cat on a sofa"},
]  # five items: fox, boat_0, boat_1, owl, cat
SHARDED = ("output.layout=sharded", "output.shard_size=2")
WHERE = {
    ("fox", 0): "images/00000/fox.png",
    ("boat", 0): "images/00000/boat_0.png",
    ("boat", 1): "images/00001/boat_1.png",
    ("owl", 0): "images/00001/owl.png",
    ("cat", 0): "images/00002/cat.png",
}


def files(records: list[dict]) -> dict:
    return {(r["id"], r["k"]): r["file_name"] for r in records}


@pytest.fixture
def prompts(cli):
    return write_prompts(cli.cwd / "p.jsonl", ROWS)


def test_sharded_layout_puts_shard_size_images_per_folder(cli, prompts):
    cli(f"dataset.path={prompts}", "output.dir=run", *SHARDED, *FAST)
    run = cli.cwd / "run"
    records = check_consistent(run)
    assert files(records) == WHERE
    folders = sorted(p.name for p in (run / "images").iterdir())
    assert folders == ["00000", "00001", "00002"]
    assert all(len(list((run / "images" / f).iterdir())) <= 2 for f in folders)


def test_an_items_path_never_changes_with_limit_resume_or_shards(cli, prompts):
    args = (f"dataset.path={prompts}", *SHARDED, *FAST)
    cli(*args, "output.dir=limited", "limit=3")
    assert files(manifest(cli.cwd / "limited")) == {k: WHERE[k] for k in list(WHERE)[:3]}
    killed = cli(*args, "output.dir=limited", check=False, env={"FLUX_BATCH_CRASH": "image_written:1"})
    assert killed.returncode == -9
    cli(*args, "output.dir=limited")
    assert files(check_consistent(cli.cwd / "limited")) == WHERE
    for shard in (0, 1):  # two independent jobs on one run directory
        cli(*args, "output.dir=sharded-jobs", "runtime.num_shards=2", f"runtime.shard={shard}")
    assert files(check_consistent(cli.cwd / "sharded-jobs")) == WHERE


@pytest.mark.parametrize("layout", ["flat", "sharded"])
def test_captions_beside_each_image(cli, prompts, layout):
    cli(f"dataset.path={prompts}", "output.dir=run", f"output.layout={layout}", "output.captions=true", *FAST)
    run = cli.cwd / "run"
    for record in manifest(run):
        caption = run / record["file_name"].replace(".png", ".txt")
        assert caption.read_text(encoding="utf-8") == record["prompt"]


def test_the_run_loads_as_a_dataset_and_its_card_says_how(cli, prompts, tmp_path):

    cli(f"dataset.path={prompts}", "output.dir=run", *SHARDED, "output.captions=true", *FAST)
    run = cli.cwd / "run"
    by_folder = load_dataset(tmp_path, "imagefolder", data_dir=str(run))
    by_card = load_dataset(tmp_path, str(run))  # README.md's configs
    for dataset in (by_folder, by_card):
        assert sorted(zip(dataset["id"], dataset["k"])) == sorted(WHERE)
        assert dataset[0]["image"].size == (32, 32)
    card = (run / "README.md").read_text()
    assert card.startswith("---\n") and '"images/*/*.png"' in card
    assert "| images | 5 |" in card and "| quant | q8_0 |" in card


def test_switching_the_layout_of_a_run_is_refused(cli, prompts):
    cli(f"dataset.path={prompts}", "output.dir=run", *FAST)
    before = (cli.cwd / "run" / "metadata.jsonl").read_bytes()
    result = cli(f"dataset.path={prompts}", "output.dir=run", *SHARDED, *FAST, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "output.layout (None -> 'sharded')" in lines[0]
    assert (cli.cwd / "run" / "metadata.jsonl").read_bytes() == before
    assert not (cli.cwd / "run" / "images" / "00000").exists()


def test_a_finished_run_without_a_card_gets_one(cli, prompts):
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    cli(*args)
    card = cli.cwd / "run" / "README.md"
    card.unlink()
    again = cli(*args)
    assert "nothing to do" in again.stdout
    assert "| images | 5 |" in card.read_text()


def test_each_layout_adds_to_the_run_fingerprint_what_it_always_did():
    """The fingerprint names the run directory: a layout's part of it must never change."""
    from flux_batch.store.layouts import make_layout

    assert make_layout("flat", None, False).fingerprint() == {}  # runs made before layouts
    assert make_layout("flat", 7, True).fingerprint() == {"captions": True}
    assert make_layout("sharded", None, False).fingerprint() == {"layout": "sharded", "shard_size": 10_000}
    assert make_layout("sharded", 2, True).fingerprint() == {
        "layout": "sharded",
        "shard_size": 2,
        "captions": True,
    }
    assert make_layout("webdataset", None, False).fingerprint() == {
        "layout": "webdataset",
        "shard_size": 1_000,
    }

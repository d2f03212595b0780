"""Prompt templates (`dataset=template`): the combinations of slot values as a plan's rows,
through the CLI: product order, samples drawn by the seed, inline alternatives, ids made of the
values (a grown slot renders only what is new), labels in the manifest and the dataset, bad
input refused in one line, and a sweep over a slot."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, compose_config, left_behind, load_dataset, manifest, pixels, script

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
COLOUR_SHAPE = 'dataset.template="a {colour} {shape}"'


def plan(*overrides: str) -> list:
    """The planned items of a template, in plan order (in-process, nothing rendered)."""
    from flux_batch.driver import plan_items

    return plan_items(compose_config("dataset=template", *overrides))


def prompts(items) -> list[str]:
    return [item.prompt for item in items]


def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = (cwd / "outputs").iterdir()
    return run_dir


# --- the plan: order, samples, alternatives, file slots (in-process) ---


def test_product_order_puts_the_first_slot_slowest(hydra_config):
    items = plan(
        'dataset.template="{size} {colour} {shape}"',
        "dataset.slots.size=[small,large]",
        "dataset.slots.colour=[red,blue]",
        "dataset.slots.shape=[circle,square,triangle]",
    )
    assert len(items) == 12
    assert prompts(items)[:4] == [
        "small red circle",
        "small red square",
        "small red triangle",
        "small blue circle",
    ]
    assert prompts(items)[-1] == "large blue triangle"
    assert items[5].extra == {"size": "small", "colour": "blue", "shape": "triangle"}
    assert all(ID.fullmatch(item.id) for item in items)
    assert items[0].id.startswith("small_red_circle-")
    assert len({item.id for item in items}) == 12


def test_inline_alternatives_are_anonymous_slots_named_by_their_place(hydra_config):
    items = plan('dataset.template="{{x}} a {red|green} {shape} {left|right}"', "dataset.slots.shape=[dot]")
    assert prompts(items) == [
        "{x} a red dot left",
        "{x} a red dot right",
        "{x} a green dot left",
        "{x} a green dot right",
    ]
    assert items[1].extra == {"_1": "red", "shape": "dot", "_2": "right"}


def test_a_file_slot_is_one_value_per_line_blank_lines_skipped(hydra_config, tmp_path):
    (tmp_path / "shapes.txt").write_text("circle\n\n  square \r\n\n")
    items = plan('dataset.template="a {shape}"', f"dataset.slots.shape={tmp_path / 'shapes.txt'}")
    assert prompts(items) == ["a circle", "a square"]


SAMPLE = (
    'dataset.template="a {colour} {shape}"',
    "dataset.mode=sample",
    "dataset.slots.shape=[circle,square,triangle]",
)
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]


def sample(count: int, colours: list[str], *more: str) -> list:
    return plan(*SAMPLE, f"dataset.count={count}", f"dataset.slots.colour=[{','.join(colours)}]", *more)


def test_a_sample_is_chosen_by_the_seed_and_the_values_alone(hydra_config):
    five = sample(5, COLOURS)
    assert len({item.id for item in five}) == 5  # drawn without repeats
    keys = [(item.id, item.prompt, item.seed) for item in five]
    # the same items in the same order whatever the order of the values
    assert [(i.id, i.prompt, i.seed) for i in sample(5, COLOURS[::-1])] == keys
    assert [(i.id, i.prompt, i.seed) for i in sample(5, COLOURS, "limit=2")] == keys[:2]
    assert [(i.id, i.prompt, i.seed) for i in sample(8, COLOURS)][:5] == keys  # a larger count keeps them
    assert {i.id for i in sample(5, COLOURS, "seed=1")} != {i.id for i in five}
    everything = sample(18, COLOURS)
    assert sorted(prompts(everything)) == sorted(
        f"a {c} {s}" for c in COLOURS for s in ("circle", "square", "triangle")
    )


# --- through the CLI ---


def test_a_grown_slot_renders_only_its_new_combinations_and_labels_every_image(cli, tmp_path):
    shapes = cli.cwd / "shapes.txt"
    shapes.write_text("circle\nsquare\n")
    args = ("dataset=template", COLOUR_SHAPE, "dataset.slots.colour=[red,green]", *FAST)
    args += ("dataset.slots.shape=shapes.txt",)
    first = cli(*args, "limit=3")
    run_dir = only_run_dir(cli.cwd)
    assert re.fullmatch(r"template-[0-9a-f]{8}-tiny-q8_0-[0-9a-f]{8}", run_dir.name)
    assert "rendered 3, skipped 0 already done" in first.stdout
    assert [r["prompt"] for r in manifest(run_dir)] == ["a red circle", "a red square", "a green circle"]
    assert "rendered 1, skipped 3 already done" in cli(*args).stdout
    before = {(r["id"], r["sha256"]) for r in manifest(run_dir)}

    # a value added to the last slot moves the old combinations in the plan, not their ids; the
    # file's content is part of the plan kept for resuming: it is read again
    with shapes.open("a") as f:
        f.write("triangle\n")
    grown = cli(*args)
    assert f"{run_dir}: rendered 2, skipped 4 already done" in grown.stdout
    records = manifest(run_dir)
    assert before < {(r["id"], r["sha256"]) for r in records}
    assert {(r["prompt"], r["colour"], r["shape"]) for r in records} == {
        (f"a {c} {s}", c, s) for c in ("red", "green") for s in ("circle", "square", "triangle")
    }
    again = cli(*args)
    assert again.stdout.strip() == f"{run_dir}: nothing to do, all 6 items already done"
    # rendered at once, in their new places, the old combinations give the same pixels
    cli(*args, "output.dir=fresh")
    fresh, kept = pixels(cli.cwd / "fresh"), pixels(run_dir)
    assert fresh.keys() == kept.keys() and all(np.array_equal(fresh[key], kept[key]) for key in kept)

    # the labels are columns of the dataset the card describes, and travel with an export
    assert "rendered by flux-batch from a prompt template," in (run_dir / "README.md").read_text()
    loaded = load_dataset(tmp_path, str(run_dir))
    assert sorted(zip(loaded["colour"], loaded["shape"])) == sorted(
        (r["colour"], r["shape"]) for r in records
    )
    out = tmp_path / "pq"
    exported = subprocess.run(
        [script("flux-batch-export"), str(run_dir), "--to", "parquet", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert exported.returncode == 0, exported.stderr
    table = load_dataset(tmp_path, "parquet", data_files=str(out / "data" / "*.parquet"))
    assert sorted(zip(table["colour"], table["shape"])) == sorted((r["colour"], r["shape"]) for r in records)
    assert sorted(json.loads(r)["colour"] for r in table["record"]) == sorted(r["colour"] for r in records)


def test_a_sample_gives_the_same_images_under_another_order_and_limit(cli):
    (cli.cwd / "colours.txt").write_text("\n".join(COLOURS))
    (cli.cwd / "reversed.txt").write_text("\n".join(COLOURS[::-1]))
    common = ("dataset=template", *SAMPLE, "dataset.count=4", *FAST)
    cli(*common, "dataset.slots.colour=colours.txt", "output.dir=a")
    cli(*common, "dataset.slots.colour=reversed.txt", "limit=2", "output.dir=b")
    a, b = manifest(cli.cwd / "a"), manifest(cli.cwd / "b")
    assert len(a) == 4 and [r["id"] for r in b] == [r["id"] for r in a[:2]]
    first = pixels(cli.cwd / "a")
    assert all(np.array_equal(first[key], image) for key, image in pixels(cli.cwd / "b").items())


def test_a_slot_is_a_sweep_axis(cli):
    result = cli(
        "-m",
        "dataset=template",
        'dataset.template="a {red|blue} {shape}"',
        "dataset.slots.shape=[circle],[square,triangle]",
        *FAST,
    )
    assert "2 jobs, 2 done; rendered 6, skipped 0 already done" in result.stdout.strip().splitlines()[-1]
    (sweep_dir,) = (cli.cwd / "multirun").iterdir()
    assert sweep_dir.name.startswith("template-")  # named by its template, as its runs are
    jobs = {p.name: manifest(p) for p in sweep_dir.iterdir() if p.is_dir()}
    assert {name: len(records) for name, records in jobs.items()} == {
        "dataset.slots.shape=[circle]": 2,
        "dataset.slots.shape=[square,triangle]": 4,
    }
    assert {(r["_1"], r["shape"]) for r in jobs["dataset.slots.shape=[circle]"]} == {
        ("red", "circle"),
        ("blue", "circle"),
    }


BAD = [
    (
        (COLOUR_SHAPE, "dataset.slots.colour=[red]"),
        "dataset.template names {shape}, which dataset.slots does not give",
    ),
    (
        (
            COLOUR_SHAPE,
            "dataset.slots.colour=[red]",
            "dataset.slots.shape=[dot]",
            "dataset.slots.size=[big]",
        ),
        "dataset.slots.size: not named in dataset.template (which names {colour}, {shape})",
    ),
    (('dataset.template="a {colour}"', "dataset.slots.colour=[]"), "dataset.slots.colour: an empty list"),
    (
        ('dataset.template="a {colour}"', "dataset.slots.colour=colours.txt"),
        "dataset.slots.colour=colours.txt: no such file",
    ),
    (
        ('dataset.template="a {colour}"', "dataset.slots.colour=[red,red]"),
        "dataset.slots.colour: 'red' is listed twice",
    ),
    (('dataset.template="a red circle"',), "names no {slot} and no {a|b} alternatives"),
    (('dataset.template=""',), "dataset.template: empty"),
    (('dataset.template="a {colour"',), "dataset.template: unmatched '{' at character 3"),
    (
        ('dataset.template="a {seed}"', "dataset.slots.seed=[1]"),
        "slot {seed} would be the record's column 'seed'",
    ),
    (("dataset.mode=sample",), "dataset.mode=sample: set dataset.count"),
    (("dataset.mode=sample", "dataset.count=10"), "dataset.count=10: the template makes only 9 combinations"),
    (("dataset.images=pictures",), "dataset.template and dataset.images: set one of them, not both"),
]


@pytest.mark.parametrize(
    "overrides, message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)]
)
def test_bad_input_is_one_line_and_writes_nothing(cli, overrides, message):
    result = cli("dataset=template", *overrides, *FAST, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flux-batch: error: ") and message in lines[0], lines
    outputs = cli.cwd / "outputs"
    assert not outputs.exists() or all(left_behind(run_dir) == [] for run_dir in outputs.iterdir())


@pytest.mark.parametrize(
    "args, said",
    [
        (
            (
                "dataset=template",
                COLOUR_SHAPE,
                "dataset.slots.colour=[red]",
                "dataset.slots.shape=[dot]",
                "dataset.count=3",
            ),
            "dataset.count=3 has no effect: dataset.mode=product does not read it (only sample does)",
        ),
        (("dataset.slots.colour=[red]", "limit=1"), "dataset.slots={'colour': ['red']} has no effect"),
    ],
    ids=["count under product", "slots without a template"],
)
def test_a_template_key_the_run_does_not_read_is_one_warning_line(cli, args, said):
    result = cli(*args, "output.dir=out", *FAST)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("flux-batch: warning:")]
    assert len(warnings) == 1 and said in warnings[0]
    assert "rendered 1" in result.stdout

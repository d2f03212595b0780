"""The demo model's edit variant (model=demo-edit): its instruction grammar, its pairs, the edit
scoring of `flux-batch-eval`, and, through the real CLI, that it recolours and moves the shapes
of the shipped evaluation set (prompts/demo-edit-eval.jsonl) as asked and keeps the rest."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Cli, manifest, script
from flux_batch.demo import EDIT_VERSION, edit_dir, ensure_built, transformer_path
from flux_batch.demo.edits import (
    EVAL_SET,
    Edit,
    all_edits,
    eval_pairs,
    parse_instruction,
    random_pair,
    write_eval_set,
)
from flux_batch.demo.evaluation import evaluate
from flux_batch.demo.scoring import edit_matches, read
from flux_batch.demo.shapes import paint

PROMPTS = Path(__file__).resolve().parents[1] / "flux_batch" / "prompts"


def test_every_instruction_parses_back_to_its_edit():
    edits = all_edits()
    assert len(edits) == len({e.text() for e in edits}) == 88
    for edit in edits:
        assert parse_instruction(edit.text()) == edit
    assert parse_instruction("Make the circle BLUE") == Edit("colour", "blue", "circle", True)
    assert parse_instruction("move it to the center") == Edit("position", "centre", None, True)
    assert parse_instruction("a blue circle on the left") is None  # a caption, not one change
    assert parse_instruction("make it shiny") is None


def test_a_pair_changes_only_what_its_edit_says():
    rng = random.Random(3)
    for _ in range(200):
        pair = random_pair(rng)
        before, after = pair.before, pair.after
        assert (before.shape, before.half) == (after.shape, after.half)
        if pair.edit.kind == "colour":
            assert (before.cx, before.cy) == (after.cx, after.cy) and before.rgb != after.rgb
            assert pair.edit.value != pair.caption.colour
        else:
            assert before.rgb == after.rgb and (before.cx, before.cy) != (after.cx, after.cy)
            assert pair.edit.value != pair.caption.position


def test_edit_scoring_passes_an_obeying_pair_and_fails_the_others():
    pair = next(p for p in eval_pairs() if p.edit.kind == "colour")
    before, after = (np.asarray(picture) for picture in pair.pictures())
    kind, value = pair.edit.kind, pair.edit.value
    obeyed = edit_matches(kind, value, read(before), read(after))
    assert obeyed == {"edited": True, "colour": None, "shape": True, "size": True, "position": True}
    # the input returned as it was: nothing edited, all kept
    unchanged = edit_matches(kind, value, read(before), read(before))
    assert unchanged == {"edited": False, "colour": None, "shape": True, "size": True, "position": True}
    # recoloured, but also moved a few pixels: the same coarse position, not the same place
    shifted = paint(type(pair.after)(**{**vars(pair.after), "cx": pair.after.cx + 6}))
    moved = edit_matches(kind, value, read(before), read(np.asarray(shifted)))
    assert moved["edited"] is True and moved["position"] is False
    # a blank output: nothing edited, nothing kept
    blank = np.full_like(before, 235)
    assert edit_matches(kind, value, read(before), read(blank))["edited"] is False
    assert edit_matches(kind, value, read(before), read(blank))["shape"] is False


def test_every_drawn_eval_pair_scores_as_obeyed():
    """The scoring itself is not what limits the model's scores: the drawn targets all pass."""
    for pair in eval_pairs():
        before, after = (np.asarray(picture) for picture in pair.pictures())
        found = edit_matches(pair.edit.kind, pair.edit.value, read(before), read(after))
        assert all(v is not False for v in found.values()), (pair, found)


def test_the_shipped_eval_set_is_what_write_eval_set_makes(tmp_path):
    written = write_eval_set(tmp_path)
    assert written.read_bytes() == (PROMPTS / f"{EVAL_SET}.jsonl").read_bytes()
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(rows) == 33 and sum(parse_instruction(r["prompt"]).kind == "colour" for r in rows) == 18
    for row in rows:
        assert (tmp_path / row["image"]).read_bytes() == (PROMPTS / row["image"]).read_bytes()
        assert Image.open(PROMPTS / row["image"]).size == (64, 64)


def test_eval_scores_a_run_of_drawn_edits(tmp_path):
    """eval.json and the table from a run directory whose outputs are the drawn targets (one of
    them replaced by its input), without rendering: the edit path of flux-batch-eval."""
    from flux_batch.demo.eval_cli import main

    pairs = eval_pairs()[:4]
    (tmp_path / "in").mkdir()
    (tmp_path / "run" / "images").mkdir(parents=True)
    records = []
    for n, pair in enumerate(pairs):
        before, after = pair.pictures()
        before.save(tmp_path / "in" / f"{n}.png")
        (after if n else before).save(tmp_path / "run" / "images" / f"{n}.png")
        sha = __import__("hashlib").sha256((tmp_path / "in" / f"{n}.png").read_bytes()).hexdigest()
        records.append(
            {
                "file_name": f"images/{n}.png",
                "id": f"e{n}",
                "k": 0,
                "prompt": pair.edit.text(),
                "seed": n,
                "model": "demo-edit",
                "quant": "q8_0",
                "inputs": [{"path": f"{n}.png", "sha256": sha}],
            }
        )
    (tmp_path / "run" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = evaluate(tmp_path / "run", inputs=tmp_path / "in")
    assert result["edits"] == result["scored"] == 4
    assert result["edit_accuracy"]["edited"] == {"right": 3, "total": 4, "accuracy": 0.75}
    assert result["edit_accuracy"]["shape"]["right"] == 4
    main([str(tmp_path / "run"), "--inputs", str(tmp_path / "in")])
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert written["edit_accuracy"] == result["edit_accuracy"]
    # an input changed since the run: refused, not scored as another edit
    shutil.copy(tmp_path / "in" / "1.png", tmp_path / "in" / "0.png")
    result = subprocess.run(
        [script("flux-batch-eval"), str(tmp_path / "run"), "--inputs", str(tmp_path / "in")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "0.png: not the input the run read (its SHA-256 differs)" in result.stderr


@pytest.mark.slow
def test_training_is_seeded_logged_and_timed(tmp_path, capsys):
    """`python -m flux_batch.demo.train_edit OUT`, shortened: the same settings give the same
    file, every step's loss is logged, and the stages' wall and CPU seconds are recorded."""
    from flux_batch.demo.train_edit import main

    short = ["--steps", "3", "--pool", "24", "--batch", "4", "--log-every", "1"]
    for out in ("a", "b"):
        assert main([str(tmp_path / out), *short]) == 0
    a, b = (tmp_path / out / "transformer-Q8_0.gguf" for out in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != transformer_path("Q8_0", "edit").read_bytes()
    log = [json.loads(line) for line in (tmp_path / "a" / "train-log.jsonl").read_text().splitlines()]
    assert [(row["stage"], row["step"]) for row in log] == [("edit", 1), ("edit", 2), ("edit", 3)]
    assert all(row["loss"] > 0 for row in log)
    summary = json.loads((tmp_path / "a" / "training.json").read_text())
    assert summary["version"] == EDIT_VERSION and summary["settings"]["steps"] == 3
    assert set(summary["stages"]) == {"pool", "edit"} and summary["total"]["cpu_s"] > 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "train-log.jsonl",
        "training.json",
        "transformer-Q8_0.gguf",
    ]
    assert "edit 3/3 loss" in capsys.readouterr().out


def test_the_preset_names_the_shipped_edit_transformer():
    assert transformer_path("Q8_0", "edit") == edit_dir() / "transformer-Q8_0.gguf"
    assert transformer_path("Q8_0", "edit").is_file()
    assert transformer_path("Q4_0", "edit").parent.name == EDIT_VERSION


def test_other_quant_types_are_made_from_the_shipped_q8_0_weights(model_cache):
    """The edit variant ships only Q8_0: F32 in the cache holds exactly its dequantized values."""
    import gguf

    made = ensure_built("F32", "edit")
    assert made == transformer_path("F32", "edit") and made.parent.parent == model_cache
    shipped = {t.name: t for t in gguf.GGUFReader(transformer_path("Q8_0", "edit")).tensors}
    tensors = gguf.GGUFReader(made).tensors
    assert {t.name for t in tensors} == set(shipped)
    for t in tensors:
        source = shipped[t.name]
        assert np.array_equal(
            np.asarray(t.data).reshape(-1),
            gguf.quants.dequantize(source.data, source.tensor_type).reshape(-1),
        ), t.name


# per kind of edit, the accuracy each check must reach on this run (one seed per item). Measured
# with the shipped weights (docs/demo-model.md, "The edit variant"): recolours 100% on every
# check; moves: edited 100%, colour and size 93% (14/15), shape 47% (7/15; 67% over two seeds).
# Moving a shape intact is the variant's weak point: its target is above chance (1 in 3), and
# one or two more misses than measured still pass.
TARGETS = {
    "colour": {"edited": 0.9, "shape": 0.9, "size": 0.9, "position": 0.9},
    "position": {"edited": 0.9, "colour": 0.8, "size": 0.8, "shape": 0.33},
}


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory, model_cache):
    cwd = tmp_path_factory.mktemp("demo-edit")
    cli = Cli(cwd, model_cache)
    cli(
        "dataset.path=prompts/demo-edit-eval.jsonl",
        "batch_size=11",
        "runtime.progress=false",
        "output.dir=edits",
        model="demo-edit",
        timeout=600,
    )
    result = subprocess.run(
        [script("flux-batch-eval"), str(cwd / "edits")], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return cwd / "edits", json.loads((cwd / "edits" / "eval.json").read_text()), result.stdout


@pytest.mark.slow
def test_demo_edit_recolours_and_moves_as_asked_and_keeps_the_rest(edit_run):
    run_dir, result, table = edit_run
    print(table)  # shown with -s, and in the log of a failure
    assert (result["images"], result["edits"], result["model"], result["quant"]) == (
        33,
        33,
        "demo-edit",
        "q8_0",
    )
    by_kind = result["edit_accuracy_by_kind"]
    assert by_kind["colour"]["edited"]["total"] == 18 and by_kind["position"]["edited"]["total"] == 15
    for kind, targets in TARGETS.items():
        accuracy = {check: row["accuracy"] for check, row in by_kind[kind].items()}
        assert all(accuracy[check] >= target for check, target in targets.items()), (kind, accuracy)
    row = next(line for line in table.splitlines() if line.startswith("edited"))
    assert row.split()[1:3] == [str(result["edit_accuracy"]["edited"]["right"]), "33"]


@pytest.mark.slow
def test_demo_edit_records_name_their_inputs(edit_run):
    run_dir, result, _ = edit_run
    records = manifest(run_dir)
    assert {r["model"] for r in records} == {"demo-edit"} and {r["family"] for r in records} == {"kontext"}
    first = next(r for r in records if r["id"] == "edit-01")
    assert first["inputs"][0]["path"] == "demo-edit-eval/01.png"
    item = next(i for i in result["items"] if i["id"] == "edit-01")
    assert item["edit"] == {"kind": "colour", "value": "red"} and item["read_input"]["colour"] != "red"


@pytest.mark.slow
def test_eval_reads_the_inputs_from_the_runs_own_copies(edit_run, tmp_path):
    """A run moved away from its prompt file still scores: its inputs/ copies are read."""
    import shutil

    run_dir, result, _ = edit_run
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    info = json.loads((moved / "run.json").read_text())
    info["config"]["dataset"]["path"] = str(tmp_path / "gone" / "edits.jsonl")
    (moved / "run.json").write_text(json.dumps(info))
    first = next(r for r in manifest(moved) if r["id"] == "edit-01")
    assert (moved / first["inputs"][0]["copy"]).is_file()
    scored = subprocess.run(
        [script("flux-batch-eval"), str(moved)], capture_output=True, text=True, timeout=300
    )
    assert scored.returncode == 0, scored.stderr
    again = json.loads((moved / "eval.json").read_text())
    assert again["edit_accuracy"] == result["edit_accuracy"]

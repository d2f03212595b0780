"""The demo model draws what its prompts say, and Q8_0 keeps its pictures: the fixed 36 prompts
x 2 seeds rendered once per session through the real CLI (one multirun over Q8_0, the
unquantized F32 transformer; Q4_0, whose diffusers dequantization is slow on CPU, on the first
8 items), then scored with the real `flux-batch-eval`."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import Cli, script

QUANTS = ("q8_0", "f32", "q4_0")


def evaluate(run_dir, reference=None) -> tuple[dict, str]:
    args = [script("flux-batch-eval"), str(run_dir)] + (["--reference", str(reference)] if reference else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads((run_dir / "eval.json").read_text()), result.stdout


@pytest.fixture(scope="module")
def scores(tmp_path_factory, model_cache):
    cwd = tmp_path_factory.mktemp("demo-quality")
    cli = Cli(cwd, model_cache)
    common = (
        "dataset.path=prompts/demo-eval.jsonl",
        "num_images=2",
        "batch_size=8",
        "runtime.progress=false",
    )
    cli("-m", "quant=q8_0,f32", *common, "hydra.sweep.dir=sweep", model="demo", timeout=900)
    cli("quant=q4_0", "limit=8", *common, "output.dir=q4_0", model="demo", timeout=900)
    runs = {"q8_0": cwd / "sweep" / "quant=q8_0", "f32": cwd / "sweep" / "quant=f32", "q4_0": cwd / "q4_0"}
    found = {quant: evaluate(runs[quant], None if quant == "f32" else runs["f32"]) for quant in QUANTS}
    for quant, (result, _) in found.items():  # shown with -s, and in the log of a failure
        print(quant, {a: row["accuracy"] for a, row in result["accuracy"].items()}, result.get("psnr"))
    return found


def test_q8_0_draws_the_prompted_colour_size_and_position(scores):
    """Far above chance (colour 1 in 6, size 1 in 2, position 1 in 5)."""
    result, table = scores["q8_0"]
    assert (result["images"], result["scored"], result["model"], result["quant"]) == (72, 72, "demo", "q8_0")
    accuracy = {a: row["accuracy"] for a, row in result["accuracy"].items()}
    assert accuracy["colour"] >= 0.9 and accuracy["size"] >= 0.9 and accuracy["position"] >= 0.95, accuracy
    assert result["accuracy"]["position"]["total"] == 72 and result["accuracy"]["size"]["total"] == 36
    row = next(line for line in table.splitlines() if line.startswith("colour"))
    assert row.split()[1:3] == [str(result["accuracy"]["colour"]["right"]), "72"]


def test_q8_0_meets_the_colour_and_shape_targets(scores):
    accuracy = {a: row["accuracy"] for a, row in scores["q8_0"][0]["accuracy"].items()}
    assert accuracy["colour"] >= 0.90 and accuracy["shape"] >= 0.75, accuracy


def test_q8_0_pictures_match_the_unquantized_transformer(scores):
    psnr = scores["q8_0"][0]["psnr"]
    assert psnr["pairs"] == 72
    assert psnr["mean_db"] >= 35, psnr
    assert f"mean {psnr['mean_db']:.2f} dB" in scores["q8_0"][1]


def test_q4_0_is_further_from_the_unquantized_pictures_than_q8_0(scores):
    q4 = scores["q4_0"][0]["psnr"]
    assert q4["pairs"] == 8
    assert q4["mean_db"] < scores["q8_0"][0]["psnr"]["mean_db"]


def test_eval_json_lists_every_item_with_what_was_read(scores):
    items = scores["q8_0"][0]["items"]
    assert len({(i["id"], i["k"]) for i in items}) == 72
    first = items[0]
    assert set(first["read"]) >= {"colour", "shape", "size", "position", "fill", "hue"}
    assert set(first["correct"]) == {"colour", "shape", "size", "position"}


def test_eval_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = subprocess.run([script("flux-batch-eval"), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"flux-batch-eval: error: {tmp_path}: not a flux-batch run directory (no metadata.jsonl)"
    )
    assert not (tmp_path / "eval.json").exists()

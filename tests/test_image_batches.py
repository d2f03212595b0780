"""Rows with input images keep every contract of text-only rows, for each family that takes
images (FLUX.1 Kontext, FLUX.2 [dev], FLUX.2 [klein]) through the real CLI: an item's pixels
are one plain pipeline call's with that input, whatever batch (with other inputs), order,
limit, resume, kill or ranks; each input is VAE-encoded once, not once per k, batch or sweep
job, and read back from `runtime.embed_cache`; an input's bytes are in the item's auto id."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import manifest, pixels, write_prompts
from flux_batch.demo import tiny
from flux_batch.plan.inputs import to_rgb
from flux_batch.render.references import fit

MODELS = [
    ("tiny-kontext", "kontext", "dev"),
    ("tiny-flux2", "flux2", "dev"),
    ("tiny-klein", "flux2-klein", "distilled"),
]
SMALL = ("sampler.steps=2", "runtime.progress=false")
COLOURS = ("red", "blue", "green", "orange")


def draw(path: Path, colour: str, size=(96, 64)) -> Path:
    """A picture of one coloured disc on grey: inputs that differ from each other."""
    image = Image.new("RGB", size, "lightgray")
    ImageDraw.Draw(image).ellipse((10, 8, 10 + size[1] - 16, size[1] - 8), fill=colour)
    image.save(path)
    return path


def rows(folder: Path) -> list[dict]:
    """Four rows with four different inputs (one square, three wide), one of them twice."""
    for i, colour in enumerate(COLOURS):
        draw(folder / f"in{i}.png", colour, (64, 64) if i == 3 else (96, 64))
    found = [{"prompt": "make it blue", "image": f"in{i}.png"} for i in range(4)]
    found[1]["num_images"] = 2
    return found


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def model(request, tmp_path_factory, model_cache):
    """(preset, family, variant, reference pixels at batch size 1, prompt file)."""
    from conftest import Cli

    preset, family, variant = request.param
    cwd = tmp_path_factory.mktemp(preset)
    prompts = write_prompts(cwd / "edits.jsonl", rows(cwd))
    Cli(cwd, model_cache)(f"dataset.path={prompts}", "output.dir=ref", *SMALL, model=preset)
    return preset, family, variant, pixels(cwd / "ref"), prompts


def run(cli, model, out: str, *args: str, **kw):
    preset, _, _, _, prompts = model
    return cli(f"dataset.path={prompts}", f"output.dir={out}", *SMALL, *args, model=preset, **kw)


def assert_same(got: dict, expected: dict, tolerance: int = 0) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        diff = np.abs(got[key].astype(int) - expected[key].astype(int)).max()
        assert diff <= tolerance, f"{key}: pixels differ by up to {diff}/255"


def test_batch_size_order_limit_and_resume_leave_the_pixels(cli, model):
    reference = model[3]
    assert len(reference) == 5
    assert {image.shape for image in reference.values()} == {(48, 80, 3), (64, 64, 3)}  # the inputs' aspects
    run(cli, model, "b4", "batch_size=4")  # different inputs share a batch
    assert_same(pixels(cli.cwd / "b4"), reference, tolerance=2)  # docs/design.md: 2/255 across sizes
    reversed_file = write_prompts(model[4].parent / "rev.jsonl", rows(model[4].parent)[::-1])
    cli(f"dataset.path={reversed_file}", "output.dir=rev", *SMALL, model=model[0])
    assert_same(pixels(cli.cwd / "rev"), reference)
    assert "rendered 2," in run(cli, model, "lim", "limit=2").stdout
    assert "rendered 3, skipped 2 already done" in run(cli, model, "lim").stdout
    assert_same(pixels(cli.cwd / "lim"), reference)


def test_batch_one_is_one_plain_pipeline_call_with_the_fitted_input(cli, model):
    """The pipeline's own handling of a PIL input (its resize, preprocessing and VAE encode)
    gives the pixels flux-batch renders from the latents it encoded once."""
    import torch

    from flux_batch import families

    preset, name, variant, reference, prompts = model
    family = families.get(name)
    base, gguf = tiny.ensure_built("Q8_0", variant, name)
    run(cli, model, "plainref")
    ours = pixels(cli.cwd / "plainref")
    pipe = family.pipeline_class().from_pretrained(base, transformer=load_transformer(family, base, gguf))
    pipe.set_progress_bar_config(disable=True)
    # the FLUX.2 pipelines refuse an input below 64 pixels a side: the 64x64 row there
    records = manifest(cli.cwd / "plainref")
    checked = records[:2] if name == "kontext" else [r for r in records if r["width"] == 64]
    assert checked
    for record in checked:
        w, h = record["width"], record["height"]
        picture = fit(to_rgb(Image.open(prompts.parent / record["inputs"][0]["path"])), w, h, "crop")
        extra = (
            {"max_area": w * h, "_auto_resize": False, "image": picture}
            if name == "kontext"
            else {"image": [picture]}
        )
        plain = pipe(
            prompt=record["prompt"],
            width=w,
            height=h,
            num_inference_steps=2,
            guidance_scale=record["guidance"],
            max_sequence_length=json.loads((cli.cwd / "plainref" / "run.json").read_text())["config"][
                "sampler"
            ]["max_sequence_length"],
            generator=torch.Generator("cpu").manual_seed(record["seed"]),
            output_type="np",
            **extra,
        ).images[0]
        expected = (plain * 255).round().astype(int)
        diff = np.abs(ours[record["id"], record["k"]].astype(int) - expected).max()
        assert diff <= 1, f"{record['id']}: differs from the plain call by {diff}/255"


def load_transformer(family, base, gguf):
    import torch
    from diffusers import GGUFQuantizationConfig

    return family.transformer_class().from_single_file(
        str(gguf),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(base),
        subfolder="transformer",
    )


def test_a_run_killed_while_reading_inputs_resumes_to_the_same_pixels(cli, model):
    # one item at a time, written before the next: the third input is read for the fourth item
    # (the second row's second image reuses its latents)
    one_by_one = ("batch_size=1", "runtime.schedule=per_item", "runtime.writers=0")
    crashed = run(cli, model, "killed", *one_by_one, check=False, env={"FLUX_BATCH_CRASH": "input_read:3"})
    assert crashed.returncode == -9
    assert len(manifest(cli.cwd / "killed")) == 3
    assert "rendered 2, skipped 3 already done" in run(cli, model, "killed").stdout
    assert_same(pixels(cli.cwd / "killed"), model[3])


def test_two_ranks_render_the_pixels_of_one_process(cli, model):
    from test_ranks import launch

    preset, _, _, reference, prompts = model
    result = launch(cli, 2, f"model={preset}", f"dataset.path={prompts}", "output.dir=two", *SMALL)
    assert result.returncode == 0, result.stderr
    assert_same(pixels(cli.cwd / "two"), reference)


def encoded_line(result) -> str:
    return next(line for line in (result.stdout + result.stderr).splitlines() if "input images of" in line)


def test_each_input_is_encoded_once_and_read_back_from_the_embedding_cache(cli, model):
    first = run(cli, model, "c1", "batch_size=2", "runtime.embed_cache=cache")
    # five items (one row twice), four inputs: four encodes
    assert "input images of 5 items: 4 VAE-encoded" in encoded_line(first)
    assert "0 read from the embedding cache" in encoded_line(first)
    again = run(cli, model, "c2", "batch_size=2", "runtime.embed_cache=cache")
    assert "input images of 5 items: 0 VAE-encoded" in encoded_line(again)
    assert "4 read from the embedding cache" in encoded_line(again)
    assert_same(pixels(cli.cwd / "c2"), pixels(cli.cwd / "c1"))


def test_a_sweep_encodes_each_input_once(cli, model):
    preset, _, _, _, prompts = model
    result = cli("-m", f"dataset.path={prompts}", "sampler.steps=1,2", "runtime.progress=false", model=preset)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "input images of" in line]
    assert len(lines) == 2
    assert "4 VAE-encoded" in lines[0] and "0 VAE-encoded" in lines[1]


def test_the_records_and_infotext_carry_the_inputs(cli, model):
    import hashlib

    run(cli, model, "rec", "limit=1")
    record = manifest(cli.cwd / "rec")[0]
    source = model[4].parent / "in0.png"
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert [{k: i[k] for k in ("path", "sha256")} for i in record["inputs"]] == [
        {"path": "in0.png", "sha256": sha}
    ]
    assert record["id"] != "make-it-blue" and len(record["id"]) == 12
    parameters = Image.open(cli.cwd / "rec" / record["file_name"]).info["parameters"]
    assert f'Inputs: "in0.png: {sha[:12]}"' in parameters


def test_an_input_whose_bytes_change_is_a_new_item(cli, model):
    folder = cli.cwd / "changing"
    folder.mkdir()
    draw(folder / "a.png", "red")
    prompts = write_prompts(folder / "p.jsonl", [{"prompt": "make it blue", "image": "a.png"}])
    args = (f"dataset.path={prompts}", "output.dir=chg", *SMALL)
    cli(*args, model=model[0])
    draw(folder / "a.png", "purple")
    assert "rendered 1, skipped 0 already done" in cli(*args, model=model[0]).stdout
    records = manifest(cli.cwd / "chg")
    assert len({r["id"] for r in records}) == 2
    assert len({r["inputs"][0]["sha256"] for r in records}) == 2


def test_a_folder_of_images_with_one_instruction(cli, model):
    folder = cli.cwd / "photos"
    folder.mkdir()
    for i, colour in enumerate(("red", "green")):
        draw(folder / f"p{i}.png", colour)
    (folder / "notes.txt").write_text("not an image")
    cli(
        f"dataset.images={folder}",
        "dataset.instruction=make it blue",
        "output.dir=dir",
        *SMALL,
        model=model[0],
    )
    records = manifest(cli.cwd / "dir")
    assert [r["inputs"][0]["path"] for r in records] == ["p0.png", "p1.png"]
    assert {r["prompt"] for r in records} == {"make it blue"}
    card = (cli.cwd / "dir" / "README.md").read_text()
    assert "from a folder of input images with one instruction," in card


def test_flux2_takes_several_reference_images_per_row(cli, model):
    preset, name, *_ = model
    if name == "kontext":
        pytest.skip("FLUX.1 Kontext takes one image (refused in one line: test_input_images.py)")
    folder = model[4].parent
    both = write_prompts(folder / "two.jsonl", [{"prompt": "combine them", "image": ["in0.png", "in1.png"]}])
    one = write_prompts(folder / "one.jsonl", [{"prompt": "combine them", "image": ["in0.png"]}])
    cli(f"dataset.path={both}", "output.dir=two-refs", *SMALL, model=preset)
    cli(f"dataset.path={one}", "output.dir=one-ref", *SMALL, model=preset)
    record = manifest(cli.cwd / "two-refs")[0]
    assert [i["path"] for i in record["inputs"]] == ["in0.png", "in1.png"]
    two, single = pixels(cli.cwd / "two-refs"), pixels(cli.cwd / "one-ref")
    assert not np.array_equal(next(iter(two.values())), next(iter(single.values())))  # the second one counts

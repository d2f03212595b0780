"""Every contract holds for every family (FLUX.1's own runs are covered by the rest of the suite;
here each other family's tiny model through the real CLI): an item's pixels do not depend on
batch size, order, limit, resume, a kill or ranks; a sweep loads the model once; the run records
name the family and the model's hash; caching, dequantizing and LoRAs work where the family has
them and are refused in one line where it has not."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file
from safetensors.torch import save_file

from conftest import PROMPTS, left_behind, manifest, pixels, write_prompts
from flux_batch import families
from flux_batch.demo import tiny

# the tiny preset of each family other than FLUX.1: (preset, family, variant)
MODELS = [
    ("tiny-kontext", "kontext", "dev"),
    ("tiny-flux2", "flux2", "dev"),
    ("tiny-klein", "flux2-klein", "distilled"),
    ("tiny-chroma", "chroma", "chroma"),
]
ROWS = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[4], PROMPTS[6]]  # 6 images, two sizes
SMALL = ("sampler.steps=2", "runtime.progress=false")


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def model(request, tmp_path_factory, model_cache):
    """(preset, family, variant, reference pixels at batch size 1, prompt file, cwd)."""
    from conftest import Cli

    preset, family, variant = request.param
    cwd = tmp_path_factory.mktemp(preset)
    prompts = write_prompts(cwd / "p.jsonl", ROWS)
    Cli(cwd, model_cache)(f"dataset.path={prompts}", "output.dir=ref", *SMALL, model=preset)
    return preset, family, variant, pixels(cwd / "ref"), prompts, cwd


def run(cli, model, out: str, *args: str, **kw):
    preset, _, _, _, prompts, _ = model
    return cli(f"dataset.path={prompts}", f"output.dir={out}", *SMALL, *args, model=preset, **kw)


def assert_same(got: dict, expected: dict, tolerance: int = 0) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        diff = np.abs(got[key].astype(int) - expected[key].astype(int)).max()
        assert diff <= tolerance, f"{key}: pixels differ by up to {diff}/255"


def test_pixels_do_not_depend_on_batch_size_order_limit_or_resume(cli, model):
    reference = model[3]
    assert len(reference) == 6 and reference[("tall", 0)].shape == (80, 48, 3)
    run(cli, model, "b3", "batch_size=3")
    assert_same(pixels(cli.cwd / "b3"), reference, tolerance=2)  # docs/design.md: 2/255 across sizes
    reversed_file = write_prompts(cli.cwd / "rev.jsonl", ROWS[::-1])
    cli(f"dataset.path={reversed_file}", "output.dir=rev", *SMALL, model=model[0])
    assert_same(pixels(cli.cwd / "rev"), reference)
    assert "rendered 2," in run(cli, model, "lim", "limit=2").stdout
    assert "rendered 4, skipped 2 already done" in run(cli, model, "lim").stdout
    assert_same(pixels(cli.cwd / "lim"), reference)


def test_a_killed_run_resumes_to_the_same_pixels(cli, model):
    crashed = run(cli, model, "killed", check=False, env={"FLUX_BATCH_CRASH": "image_written:3"})
    assert crashed.returncode == -9
    assert len(manifest(cli.cwd / "killed")) == 2
    assert "rendered 4, skipped 2 already done" in run(cli, model, "killed").stdout
    assert_same(pixels(cli.cwd / "killed"), model[3])


def test_two_ranks_render_the_pixels_of_one_process(cli, model):
    from test_ranks import launch

    preset, _, _, reference, prompts, _ = model
    result = launch(cli, 2, f"model={preset}", f"dataset.path={prompts}", "output.dir=two", *SMALL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("6 items in the plan, 2 ranks)") or "2 ranks" in result.stdout
    assert_same(pixels(cli.cwd / "two"), reference)


def test_a_sweep_loads_the_model_once(cli, model):
    preset, _, _, _, prompts, _ = model
    result = cli(
        "-m",
        f"dataset.path={prompts}",
        "sampler.steps=1,2",
        "runtime.progress=false",
        "limit=1",
        model=preset,
    )
    assert "2 jobs, 2 done" in result.stdout.strip().splitlines()[-1]
    assert result.stdout.strip().endswith("model loaded 1 time(s)")


def test_the_run_records_name_the_family_and_the_model_hash(cli, model):
    preset, family, variant, _, _, _ = model
    result = run(cli, model, "rec", "limit=1")
    run_dir = cli.cwd / "rec"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["config"]["model"]["family"] == family
    assert info["settings"]["model"]["family"] == family  # in the fingerprint
    gguf = tiny.transformer_path("Q8_0", variant, family)
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    record = manifest(run_dir)[0]
    assert (record["model"], record["family"], record["model_sha256"]) == (preset, family, sha)
    parameters = Image.open(run_dir / record["file_name"]).info["parameters"]
    assert f"Model hash: {sha[:10]}" in parameters
    assert f"Family: {families.get(family).label}" in parameters
    assert families.get(family).label in (run_dir / "README.md").read_text()
    assert result.returncode == 0


def test_the_fingerprint_tells_families_apart(cli, model_cache):
    """The same files under two families of the same tensors (FLUX.1 and Kontext) are two runs:
    the family is in the fingerprint."""
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS[:1])
    base, gguf = tiny.ensure_built("Q8_0", "dev", "kontext")
    files = (f"model.base={base}", f"model.transformer={gguf}", f"dataset.path={prompts}", *SMALL)
    flux1 = cli(*files, "model.family=flux1", model="tiny-kontext")
    kontext = cli(*files, model="tiny-kontext")
    assert (
        flux1.stdout.strip().splitlines()[-1].split(":")[0]
        != kontext.stdout.strip().splitlines()[-1].split(":")[0]
    )


def test_taylorseer_and_dequantize_once(cli, model):
    reference = model[3]
    family = families.get(model[1])
    assert "taylorseer" in family.features.cache_methods
    run(cli, model, "ts", "cache=taylorseer", "sampler.steps=4", "cache.warmup=1", "cache.interval=2")
    run(cli, model, "exact4", "sampler.steps=4")
    cached, exact = pixels(cli.cwd / "ts"), pixels(cli.cwd / "exact4")
    assert any(not np.array_equal(cached[k], exact[k]) for k in exact)  # steps were predicted
    run(cli, model, "deq", "runtime.dequantize=once")
    assert_same(pixels(cli.cwd / "deq"), reference, tolerance=1)


def test_features_a_family_lacks_are_refused_in_one_line(cli, model):
    preset, name, _, _, prompts, _ = model
    family = families.get(name)
    lacking = sorted({"fbcache", "taylorseer"} - family.features.cache_methods)
    for method in lacking:
        result = run(cli, model, "refused", f"cache={method}", check=False)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"flux-batch: error: cache={method}: not available for model.family={name} "
            f"({family.label}); it has {', '.join(sorted(family.features.cache_methods))}"
        ]
        assert left_behind(cli.cwd / "refused") == []
    if not family.features.lora:
        lora = write_lora(cli.cwd / "l.safetensors", name, model[2])
        result = run(cli, model, "refused", f"lora=[{{path:{lora}}}]", check=False)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert "does not load LoRAs" in result.stderr


def write_lora(path: Path, family: str, variant: str) -> Path:
    """A PEFT-layout LoRA on the first double block's q and k of a family's tiny transformer."""
    import torch

    folder = tiny.ensure_built("Q8_0", variant, family)[0]
    weights = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for module in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k"):
        out_dim, in_dim = weights[f"{module}.weight"].shape
        tensors[f"transformer.{module}.lora_A.weight"] = torch.randn(4, in_dim, generator=g) * 0.5
        tensors[f"transformer.{module}.lora_B.weight"] = torch.randn(out_dim, 4, generator=g) * 0.5
    save_file(tensors, path)
    return path


def test_a_lora_changes_the_pixels_where_the_family_loads_loras(cli, model):
    preset, name, variant, reference, _, _ = model
    if not families.get(name).features.lora:
        pytest.skip(f"{name} loads no LoRAs (refused: see the test above)")
    lora = write_lora(cli.cwd / "l.safetensors", name, variant)
    run(cli, model, "lora", f"lora=[{{path:{lora}}}]")
    got = pixels(cli.cwd / "lora")
    assert got.keys() == reference.keys()
    assert all(not np.array_equal(got[k], reference[k]) for k in reference)

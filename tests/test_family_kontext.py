"""FLUX.1 Kontext [dev] (text only, for now) and FLUX.1 Krea [dev]: their presets render a tiny
model from a GGUF in the community's BFL layout, with or without the `model.diffusion_model.`
prefix; Kontext at batch size 1 gives the pixels of one plain FluxKontextPipeline call; a
schnell file under Kontext is refused before loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import left_behind, manifest, pixels, write_prompts
from flux_batch.demo import tiny
from flux_batch.gguf.quantize import quantize_checkpoint
from test_gguf_interop import psnr, rewrite

ROWS = [
    {"id": "fox", "prompt": "a red fox in the snow"},
    {"id": "owl", "prompt": "an owl at night", "seed": 5},
]
SETTINGS = ("sampler.steps=3", "sampler.width=48", "sampler.height=32", "runtime.progress=false")


@pytest.fixture(scope="module")
def community(tmp_path_factory, model_cache):
    """{(family folder, prefixed): BFL-layout Q8_0 file} for Kontext's and FLUX.1-dev's tiny models."""
    root = tmp_path_factory.mktemp("community")
    files = {}
    for family in ("kontext", "flux1"):
        base, _ = tiny.ensure_built("Q8_0", "dev", family)
        bfl = root / f"{family}-bfl.gguf"
        quantize_checkpoint(base / "transformer", bfl, "Q8_0", layout="bfl")
        files[family, False] = bfl
        files[family, True] = rewrite(bfl, root / f"{family}-bfl-prefixed.gguf", prefix=True)
    return files


@pytest.mark.parametrize("prefixed", [False, True], ids=["bfl", "bfl-prefixed"])
@pytest.mark.parametrize("preset, family", [("flux-kontext", "kontext"), ("flux-krea", "flux1")])
def test_the_preset_renders_a_community_layout_file(cli, community, preset, family, prefixed):
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    base = tiny.base_dir("dev", family)
    result = cli(
        f"model={preset}",
        f"model.base={base}",
        f"model.transformer={community[family, prefixed]}",
        f"dataset.path={prompts}",
        "output.dir=out",
        *SETTINGS,
    )
    assert "rendered 2, skipped 0 already done, failed 0" in result.stdout
    records = manifest(cli.cwd / "out")
    assert {r["model"] for r in records} == {preset}
    assert all(Image.open(cli.cwd / "out" / r["file_name"]).size == (48, 32) for r in records)
    assert ("family" in records[0]) == (family != "flux1")


def test_batch_one_gives_the_pixels_of_one_plain_kontext_pipeline_call(cli):
    from diffusers import FluxKontextPipeline, FluxTransformer2DModel, GGUFQuantizationConfig

    # the diffusers-layout file: diffusers' own converter reads a BFL file only at FLUX.1's
    # full width (it assumes 3072), which the tiny model is not
    base, gguf = tiny.ensure_built("Q8_0", "dev", "kontext")
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    cli(
        "model=flux-kontext",
        f"model.base={base}",
        f"model.transformer={gguf}",
        f"dataset.path={prompts}",
        "output.dir=out",
        "sampler.max_sequence_length=32",
        *SETTINGS,
    )
    ours = {key: image for key, image in pixels(cli.cwd / "out").items()}
    transformer = FluxTransformer2DModel.from_single_file(
        str(gguf),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(base),
        subfolder="transformer",
        dtype=torch.float32,
    )
    pipe = FluxKontextPipeline.from_pretrained(str(base), transformer=transformer, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for record in manifest(cli.cwd / "out"):
        plain = pipe(
            prompt=record["prompt"],
            width=48,
            height=32,
            max_area=48 * 32,  # Kontext resizes to this area: the asked size
            num_inference_steps=3,
            guidance_scale=2.5,
            max_sequence_length=32,
            generator=torch.Generator("cpu").manual_seed(record["seed"]),
            output_type="np",
        ).images[0]
        expected = (plain * 255).round().astype(np.uint8)
        got = ours[record["id"], record["k"]]
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, psnr(got, expected)


def test_a_schnell_file_under_kontext_is_refused_before_loading(cli, model_cache):
    _, schnell = tiny.ensure_built("Q8_0", "schnell")
    result = cli(
        "model=tiny-kontext",
        f"model.transformer={schnell}",
        "output.dir=out",
        "limit=1",
        check=False,
        model=None,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"flux-batch: error: model.transformer={schnell}: this GGUF is FLUX.1-schnell-style (it has no "
        "guidance embedding), but model=tiny-kontext needs a FLUX.1 Kontext [dev] file"
    ]
    assert left_behind(cli.cwd / "out") == []


def test_a_kontext_run_names_its_family_and_pipeline(cli):
    result = cli("model=tiny-kontext", "limit=1", "output.dir=out", "runtime.progress=false", model=None)
    assert result.returncode == 0
    record = manifest(cli.cwd / "out")[0]
    assert (record["model"], record["family"]) == ("tiny-kontext", "kontext")
    assert "Family: FLUX.1 Kontext" in Image.open(cli.cwd / "out" / record["file_name"]).info["parameters"]

"""The schnell path: a transformer with no guidance embedding, its own defaults, and GGUF
files refused under the other variant's config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from conftest import manifest, write_prompts
from flux_batch.cli import register_configs


def test_flux_schnell_defaults():
    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=flux-schnell"])
    assert (cfg.sampler.steps, cfg.sampler.guidance, cfg.sampler.max_sequence_length) == (4, 0.0, 256)
    assert cfg.model.variant == "schnell"


def test_tiny_schnell_renders_end_to_end(cli, tmp_path):
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        [
            {"id": "a", "prompt": "a cat"},
            {"id": "b", "prompt": "a dog", "negative_prompt": "blurry"},
        ],
    )
    result = cli(f"dataset.path={prompts}", "model=tiny-schnell", "output.dir=run", "sampler.true_cfg=2")
    assert "rendered 2," in result.stdout
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["settings"]["model"]["variant"] == "schnell"
    assert info["settings"]["model"]["transformer"] == "transformer-Q8_0.gguf"
    records = {r["id"]: r for r in manifest(tmp_path / "run")}
    assert (records["a"]["steps"], records["a"]["guidance"], records["a"]["model"]) == (
        4,
        0.0,
        "tiny-schnell",
    )
    assert records["b"]["true_cfg"] == 2.0
    parameters = Image.open(tmp_path / "run" / records["a"]["file_name"]).info["parameters"]
    assert "Steps: 4, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 0," in parameters


@pytest.fixture
def schnell_gguf(cli) -> Path:
    """The tiny schnell GGUF, built into the session cache."""
    from flux_batch.demo import tiny

    return tiny.ensure_built("Q8_0", "schnell")[1]


@pytest.mark.parametrize(
    "model, other, message",
    [
        (
            "tiny-schnell",
            "dev",
            "this GGUF is FLUX.1-dev-style (it has a guidance embedding), but "
            "model=tiny-schnell needs a schnell file; use model=tiny with it",
        ),
        (
            "tiny",
            "schnell",
            "this GGUF is FLUX.1-schnell-style (it has no guidance embedding), but "
            "model=tiny needs a dev file; use model=tiny-schnell with it",
        ),
    ],
)
def test_a_gguf_of_the_other_variant_is_refused(cli, schnell_gguf, model_cache, model, other, message):
    gguf = schnell_gguf if other == "schnell" else model_cache / "tiny-v1" / "transformer-Q8_0.gguf"
    result = cli(f"model={model}", f"model.transformer={gguf}", "output.dir=out", check=False)
    assert result.returncode == 2
    assert f"model.transformer={gguf}: {message}" in result.stderr
    assert not (cli.cwd / "out" / "run.json").exists()


@pytest.mark.parametrize(
    "names, variant, refused",
    [
        (["double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"], "dev", False),
        (["double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"], "schnell", True),
        (["double_blocks.0.img_attn.qkv.weight", "time_in.in_layer.weight"], "schnell", False),
        (["double_blocks.0.img_attn.qkv.weight", "time_in.in_layer.weight"], "dev", True),
    ],
)
def test_bfl_named_ggufs_are_told_apart_by_their_guidance_embedding(tmp_path, names, variant, refused):
    # city96's FLUX GGUFs keep BFL's tensor names (guidance_in.*), the tiny model diffusers' ones
    import numpy as np
    from omegaconf import OmegaConf

    from flux_batch.errors import ModelFileError
    from flux_batch.gguf.file import write_gguf
    from flux_batch.model.files import _check_gguf_against_config

    path = tmp_path / "flux1-Q8_0.gguf"
    write_gguf(path, {name: np.ones((32, 32), np.float32) for name in names}, "Q8_0")
    m = OmegaConf.create({"name": f"flux-{variant}", "variant": variant, "builder": None})
    if refused:
        with pytest.raises(ModelFileError, match="use model=flux-(dev|schnell) with it"):
            _check_gguf_against_config(m, str(path), str(tmp_path))
    else:
        _check_gguf_against_config(m, str(path), str(tmp_path))

"""LoRA adapters on the GGUF-quantized tiny transformer, through the CLI: scales, layouts,
several at once, sweeps, identity in run.json / manifest / infotext, and refused files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import manifest, pixels, write_prompts
from lora_files import low_rank_pairs, shared_qkv_down, write_diffusers_lora, write_kohya_lora

ROWS = [{"id": "fox", "prompt": "a red fox in the snow"}]


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, model_cache) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    style = shared_qkv_down(low_rank_pairs(model_cache, seed=1))
    return {
        "style": write_diffusers_lora(folder / "style.safetensors", style),
        "style_kohya": write_kohya_lora(folder / "style_kohya.safetensors", style),
        "detail": write_diffusers_lora(folder / "detail.safetensors", low_rank_pairs(model_cache, seed=2)),
    }


@pytest.fixture(scope="module")
def base_pixels(tmp_path_factory, model_cache):
    from conftest import Cli

    cwd = tmp_path_factory.mktemp("lora-base")
    prompts = write_prompts(cwd / "p.jsonl", ROWS)
    Cli(cwd, model_cache)(f"dataset.path={prompts}", "output.dir=base")
    return pixels(cwd / "base")


def render(cli, *overrides: str, name: str) -> dict:
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    cli(f"dataset.path={prompts}", f"output.dir={name}", *overrides)
    return pixels(cli.cwd / name)


def lora_list(*entries: tuple[Path, float]) -> str:
    return "lora=[" + ",".join(f"{{path:{path},scale:{scale}}}" for path, scale in entries) + "]"


def max_diff(a: dict, b: dict) -> int:
    assert set(a) == set(b)
    return max(int(np.abs(a[k].astype(int) - b[k].astype(int)).max()) for k in a)


@pytest.fixture(scope="module")
def styled(tmp_path_factory, model_cache, lora_files) -> Path:
    """The run dir of ROWS with the style LoRA at 0.8."""
    from conftest import Cli

    cwd = tmp_path_factory.mktemp("lora-styled")
    render(Cli(cwd, model_cache), lora_list((lora_files["style"], 0.8)), name="styled")
    return cwd / "styled"


def test_scale_zero_is_exactly_the_base_model_and_a_scale_changes_pixels(
    cli, lora_files, base_pixels, styled
):
    assert max_diff(render(cli, lora_list((lora_files["style"], 0)), name="zero"), base_pixels) == 0
    assert max_diff(pixels(styled), base_pixels) > 5


def test_lora_identity_in_run_json_manifest_and_infotext(lora_files, styled):
    sha = hashlib.sha256(lora_files["style"].read_bytes()).hexdigest()
    info = json.loads((styled / "run.json").read_text())
    assert info["settings"]["lora"] == [{"sha256": sha, "scale": 0.8}]
    record = manifest(styled)[0]
    assert record["lora"] == [{"name": "style", "sha256": sha, "scale": 0.8}]
    parameters = Image.open(styled / record["file_name"]).info["parameters"]
    assert parameters.endswith(f'Lora hashes: "style: {sha[:12]}", Lora weights: "style: 0.8"')


def test_kohya_layout_renders_like_the_same_lora_in_diffusers_layout(cli, lora_files, styled):
    # The Kohya file fuses q, k and v into BFL's `qkv` layer; diffusers' Flux loader splits it
    # back, so the adapters, and the pixels, are the same.
    kohya_layout = render(cli, lora_list((lora_files["style_kohya"], 0.8)), name="kohya")
    assert max_diff(kohya_layout, pixels(styled)) == 0


def test_several_loras_each_with_its_own_scale(cli, lora_files, styled):
    style, detail = lora_files["style"], lora_files["detail"]
    with_detail_off = render(cli, lora_list((style, 0.8), (detail, 0)), name="detail-off")
    both = render(cli, lora_list((style, 0.8), (detail, 0.8)), name="both")
    assert max_diff(with_detail_off, pixels(styled)) == 0
    assert max_diff(both, pixels(styled)) > 5
    assert [entry["name"] for entry in manifest(cli.cwd / "both")[0]["lora"]] == ["style", "detail"]


def test_a_scale_sweeps_with_multirun(cli, lora_files, base_pixels):
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    cli(
        "-m",
        f"dataset.path={prompts}",
        lora_list((lora_files["style"], 1)),
        "lora.0.scale=0,0.8",
        "hydra.sweep.dir=sweep",
    )
    runs = {
        json.loads(path.read_text())["settings"]["lora"][0]["scale"]: path.parent
        for path in (cli.cwd / "sweep").rglob("run.json")
    }
    assert sorted(runs) == [0.0, 0.8]
    assert max_diff(pixels(runs[0.0]), base_pixels) == 0
    assert max_diff(pixels(runs[0.8]), base_pixels) > 5


def test_a_changed_lora_file_is_another_run(cli, lora_files, model_cache, tmp_path):
    style = tmp_path / "style.safetensors"
    style.write_bytes(lora_files["style"].read_bytes())
    render(cli, lora_list((style, 1)), name="run")
    write_diffusers_lora(style, low_rank_pairs(model_cache, seed=3))
    result = cli(f"dataset.path={cli.cwd / 'p.jsonl'}", "output.dir=run", lora_list((style, 1)), check=False)
    assert result.returncode == 2
    assert "holds a run with other settings: lora.0.sha256" in result.stderr


def test_a_lora_matching_no_layer_is_an_error_naming_the_file(cli, tmp_path):
    import torch
    from safetensors.torch import save_file

    other = tmp_path / "sdxl_style.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        },
        str(other),
    )
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    result = cli(f"dataset.path={prompts}", lora_list((other, 1)), "output.dir=out", check=False)
    assert result.returncode == 2, result.stderr
    assert f"lora.0.path={other}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "metadata.jsonl").exists()
    assert not (tmp_path / "out" / "run.json").exists()


@pytest.mark.parametrize(
    "name, message",
    [
        ("style.ckpt", "only .safetensors LoRA files are read"),
        ("missing.safetensors", "LoRA file not found"),
    ],
)
def test_pickles_and_missing_files_are_refused_before_the_model_loads(cli, tmp_path, name, message):
    path = tmp_path / name
    if name.endswith(".ckpt"):
        path.write_bytes(b"\x80\x04not read")
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    result = cli(f"dataset.path={prompts}", lora_list((path, 1)), check=False)
    assert result.returncode == 2
    assert f"lora.0.path={path}: {message}" in result.stderr
    assert "loading transformer" not in result.stderr


def test_a_non_numeric_scale_names_the_key(cli):
    result = cli("lora=[{path:a.safetensors,scale:strong}]", check=False)
    assert result.returncode != 0
    assert "lora" in result.stderr and "scale" in result.stderr


def test_a_hub_lora_that_cannot_be_fetched_is_reported_with_its_key(cli):
    # the test environment is offline (HF_HUB_OFFLINE=1): the hub is asked and says no
    result = cli(
        "lora=[{path:someone/style-lora/style.safetensors,scale:0.5}]", "output.dir=out", check=False
    )
    assert result.returncode == 2
    assert (
        "lora.0.path=someone/style-lora/style.safetensors: cannot fetch it from the Hugging Face hub"
    ) in result.stderr
    assert not (cli.cwd / "out" / "run.json").exists()

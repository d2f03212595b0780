"""FLUX.2 [dev] and [klein] (families/flux2/): each preset renders a tiny model of its family
from a GGUF in the community's BFL layout, with and without the `model.diffusion_model.`
prefix; the mapped reader gives diffusers' own tensors; flux-batch's pixels agree with one
plain diffusers call; a wrong variant or family and a missing feature are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import manifest, pixels, run_script, write_prompts

PREFIX = "model.diffusion_model."
SMALL = ("sampler.steps=2", "sampler.width=32", "sampler.height=32", "runtime.progress=false")
FAMILY_OF = {"dev": "flux2", "distilled": "flux2-klein", "base": "flux2-klein"}


def tiny(variant: str) -> Path:
    from flux_batch.demo import tiny as builder

    base, _ = builder.ensure_built("Q8_0", variant, FAMILY_OF[variant])
    return base


def bfl_gguf(variant: str, out: Path, prefix: str = "") -> Path:
    """The tiny transformer as the community lays FLUX.2 GGUFs out: BFL names, Q8_0."""
    from flux_batch.gguf.checkpoint import PlannedTensor, open_checkpoint, plan
    from flux_batch.gguf.file import write_gguf

    tensors = plan(open_checkpoint(tiny(variant) / "transformer"), "bfl")
    write_gguf(out, [PlannedTensor(prefix + t.name, t.shape, t.load) for t in tensors], "Q8_0")
    return out


@pytest.fixture
def prompts(tmp_path):
    return write_prompts(
        tmp_path / "p.jsonl", [{"prompt": "a red fox"}, {"prompt": "a blue boat", "seed": 7}]
    )


@pytest.mark.parametrize(
    "preset, variant, prefix",
    [
        ("flux2-dev", "dev", ""),
        ("flux2-dev", "dev", PREFIX),
        ("flux2-klein-4b", "distilled", ""),
        ("flux2-klein-4b", "distilled", PREFIX),
        ("flux2-klein-9b", "distilled", PREFIX),
    ],
)
def test_each_preset_renders_a_bfl_gguf_of_its_family(cli, tmp_path, prompts, preset, variant, prefix):
    gguf = bfl_gguf(variant, tmp_path / "t.gguf", prefix)
    cli(
        f"model={preset}",
        f"model.base={tiny(variant)}",
        f"model.transformer={gguf}",
        "sampler.max_sequence_length=64",
        f"dataset.path={prompts}",
        *SMALL,
        "output.dir=out",
    )
    images = pixels(tmp_path / "out")
    assert len(images) == 2 and all(im.shape == (32, 32, 3) for im in images.values())


def test_the_mapped_reader_gives_diffusers_tensors_for_a_bfl_file(tmp_path, model_cache):
    import torch
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    from flux_batch.gguf import mmap

    for variant in ("dev", "distilled"):
        path = bfl_gguf(variant, tmp_path / f"{variant}.gguf", PREFIX)
        ours = mmap.state_dict(path)
        theirs = load_gguf_checkpoint(path)
        theirs = convert_flux2_transformer_checkpoint_to_diffusers(
            {k.removeprefix(PREFIX): v for k, v in theirs.items()}
        )
        assert ours.keys() == theirs.keys()
        for name in theirs:
            a, b = ours[name], theirs[name]
            assert getattr(a, "quant_type", None) == getattr(b, "quant_type", None), name
            assert torch.equal(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor)), name


@pytest.mark.parametrize(
    "preset, variant, guidance",
    [("tiny-klein", "distilled", 1.0), ("tiny-flux2", "dev", 4.0), ("tiny-klein", "base", 4.0)],
)
def test_flux_batch_agrees_with_one_plain_diffusers_call(cli, tmp_path, preset, variant, guidance):
    """The GGUF written by `flux-batch-gguf quantize` (BFL layout), loaded by diffusers' own
    reader, renders the pixels flux-batch renders from it (klein base: with real CFG)."""
    import torch
    from diffusers import GGUFQuantizationConfig

    from flux_batch import families

    folder = tiny(variant)
    gguf = tmp_path / "q.gguf"
    done = run_script(
        "flux-batch-gguf", "quantize", folder / "transformer", gguf, "--type", "Q8_0", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red fox", "seed": 3}])
    settings = dict(steps=3, width=64, height=64)
    cli(
        f"model={preset}",
        f"model.variant={variant}",
        f"model.transformer={gguf}",
        f"dataset.path={prompts}",
        f"sampler.steps={settings['steps']}",
        f"sampler.guidance={guidance}",
        "batch_size=1",
        "output.dir=out",
    )
    ours = next(iter(pixels(tmp_path / "out").values())).astype(int)

    family = families.get(FAMILY_OF[variant])
    transformer = family.transformer_class().from_single_file(
        str(gguf),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(folder),
        subfolder="transformer",
    )
    pipe = family.pipeline_class().from_pretrained(folder, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        prompt="a red fox",
        height=settings["height"],
        width=settings["width"],
        num_inference_steps=settings["steps"],
        guidance_scale=guidance,
        max_sequence_length=64,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).images[0]
    theirs = (image * 255).round().clip(0, 255).astype(int)
    diff = np.abs(ours - theirs)
    mse = float((diff**2).mean())
    psnr = "inf" if mse == 0 else f"{10 * np.log10(255**2 / mse):.1f}"
    print(f"{preset} {variant}: max abs {diff.max()}/255, PSNR {psnr} dB")
    assert diff.max() <= 1


def one_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_klein_file_under_the_dev_preset_is_one_line(cli, tmp_path, prompts):
    gguf = bfl_gguf("distilled", tmp_path / "k.gguf")
    result = cli(
        "model=flux2-dev",
        f"model.base={tiny('dev')}",
        f"model.transformer={gguf}",
        f"dataset.path={prompts}",
        *SMALL,
        "output.dir=out",
        check=False,
    )
    assert one_line(result) == (
        f"flux-batch: error: model.transformer={gguf}: this is a FLUX.2 [klein] transformer; "
        "model=flux2-dev expects FLUX.2 [dev]; use model=flux2-klein-4b or -9b"
    )
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_dev_file_under_a_klein_preset_is_one_line(cli, tmp_path, prompts):
    gguf = bfl_gguf("dev", tmp_path / "d.gguf", PREFIX)
    result = cli(
        "model=tiny-klein",
        f"model.transformer={gguf}",
        f"dataset.path={prompts}",
        *SMALL,
        "output.dir=out",
        check=False,
    )
    assert (
        "this is a FLUX.2 [dev] transformer; model=tiny-klein expects FLUX.2 [klein]; use model=tiny-flux2"
        in one_line(result)
    )
    assert not (tmp_path / "out" / "run.json").exists()


def test_distilled_and_base_are_told_by_the_folder(cli, tmp_path, prompts):
    distilled = tiny("distilled")
    result = cli(
        "model=tiny-klein",
        "model.variant=base",
        f"model.base={distilled}",
        f"model.transformer={distilled}/transformer-Q8_0.gguf",
        f"dataset.path={prompts}",
        *SMALL,
        "output.dir=out",
        check=False,
    )
    assert one_line(result) == (
        f"flux-batch: error: model.base={distilled}: its model_index.json says is_distilled=true "
        "(FLUX.2 [klein] distilled), but model.variant=base; set model.variant=distilled, or use a "
        "base pipeline folder"
    )
    assert json.loads((distilled / "model_index.json").read_text())["is_distilled"] is True
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_flux1_file_under_a_flux2_preset_is_one_line(cli, tmp_path, prompts, model_cache):
    flux1 = model_cache / "tiny-v1" / "transformer-Q8_0.gguf"
    result = cli(
        "model=flux2-klein-4b",
        f"model.base={tiny('distilled')}",
        f"model.transformer={flux1}",
        f"dataset.path={prompts}",
        *SMALL,
        "output.dir=out",
        check=False,
    )
    assert one_line(result) == (
        f"flux-batch: error: model.transformer={flux1}: this is a FLUX.1 dev transformer; "
        "model=flux2-klein-4b expects FLUX.2 [klein]"
    )
    assert not (tmp_path / "out" / "run.json").exists()


def test_inspect_names_the_family_and_variant(tmp_path, model_cache):
    for variant, label, short in (("dev", "FLUX.2 [dev]", "dev"), ("distilled", "FLUX.2 [klein]", "klein")):
        gguf = bfl_gguf(variant, tmp_path / f"{variant}.gguf", PREFIX)
        text = run_script("flux-batch-gguf", "inspect", gguf).stdout
        assert f"model         {label} (" in text and "2 double + 2 single blocks, hidden size 32" in text
        info = json.loads(run_script("flux-batch-gguf", "inspect", gguf, "--json").stdout)
        assert (info["family"], info["variant"], info["model"], info["layout"]) == (
            "flux2",
            short,
            label,
            "bfl",
        )


def test_taylorseer_renders_and_dequantize_once_renders_the_same_pixels(cli, tmp_path, prompts):
    common = ("model=tiny-klein", f"dataset.path={prompts}", *SMALL)
    never = cli(*common, "runtime.dequantize=never", "output.dir=never")
    once = cli(*common, "runtime.dequantize=once", "output.dir=once")
    assert "rendered 2" in never.stdout and "rendered 2" in once.stdout
    a, b = pixels(tmp_path / "never"), pixels(tmp_path / "once")
    assert a.keys() == b.keys()
    assert max(np.abs(a[k].astype(int) - b[k].astype(int)).max() for k in a) <= 1
    cli(*common, "cache=taylorseer", "sampler.steps=6", "output.dir=seer")
    assert len(manifest(tmp_path / "seer")) == 2


def test_fbcache_is_refused_for_flux2(cli, tmp_path, prompts):
    result = cli(
        "model=tiny-flux2", f"dataset.path={prompts}", *SMALL, "cache=fbcache", "output.dir=out", check=False
    )
    assert one_line(result) == (
        "flux-batch: error: cache=fbcache: not available for model.family=flux2 (FLUX.2 [dev]); "
        "it has none, taylorseer"
    )
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_peft_lora_changes_a_klein_render(cli, tmp_path, prompts):
    """A LoRA in diffusers' PEFT format (`transformer.` names) loads into FLUX.2 through the
    CLI; the BFL and kohya FLUX.2 LoRA formats are diffusers' to fix (#13484)."""
    from diffusers import Flux2Transformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    model = Flux2Transformer2DModel.from_pretrained(tiny("distilled"), subfolder="transformer")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "to_qkv_mlp_proj"]
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    lora = tmp_path / "style.safetensors"
    save_file({f"transformer.{k}": v for k, v in get_peft_model_state_dict(model).items()}, lora)
    common = ("model=tiny-klein", f"dataset.path={prompts}", *SMALL)
    cli(*common, "output.dir=plain")
    cli(*common, f"lora=[{{path:{lora},scale:1.0}}]", "output.dir=styled")
    plain, styled = pixels(tmp_path / "plain"), pixels(tmp_path / "styled")
    assert plain.keys() == styled.keys()
    assert all(np.abs(plain[k].astype(int) - styled[k].astype(int)).max() > 0 for k in plain)

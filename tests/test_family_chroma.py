"""The Chroma family (model=chroma, tiny-chroma): its GGUF files in the community's BFL layout
load through the mapped reader at any width, it agrees with a plain ChromaPipeline call, an
item's pixels do not depend on its batch (masks and classifier-free guidance per item), a file
of another family is refused in one line, the GGUF tools know its layout, and its features
(TaylorSeer, LoRA, runtime.dequantize) work while those it lacks are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import manifest, pixels, write_prompts
from test_gguf_cli import gguf_cli
from test_gguf_interop import rewrite

SMALL = ("sampler.steps=2", "sampler.width=64", "sampler.height=64", "runtime.progress=false")
# model=chroma with the tiny model's files: its own steps and size are Chroma1-HD's
AS_TINY = ("sampler.guidance=4", "model.max_sequence_length=32")
ROWS = [
    {"id": "fox", "prompt": "a red fox in the snow", "seed": 1234},
    {"id": "bird", "prompt": "a small blue bird on a branch under a grey winter sky", "seed": 7},
    {"id": "sea", "prompt": "sea", "seed": 99},
]


@pytest.fixture(scope="module")
def tiny_chroma(model_cache) -> tuple[Path, Path]:
    """The tiny Chroma folder and its diffusers-layout Q8_0 GGUF."""
    from flux_batch.demo import tiny

    return tiny.ensure_built("Q8_0", "chroma", "chroma")


@pytest.fixture(scope="module")
def bfl_files(tiny_chroma, tmp_path_factory) -> dict[str, Path]:
    """The tiny transformer as the community lays Chroma GGUFs out: BFL names, Q8_0, with and
    without the `model.diffusion_model.` prefix."""
    from flux_batch.gguf.quantize import quantize_checkpoint

    folder = tmp_path_factory.mktemp("chroma-bfl")
    quantize_checkpoint(tiny_chroma[0] / "transformer", folder / "plain.gguf", "Q8_0", layout="bfl")
    rewrite(folder / "plain.gguf", folder / "prefixed.gguf", prefix=True)  # the same tensors, renamed
    return {"plain": folder / "plain.gguf", "prefixed": folder / "prefixed.gguf"}


def render(cli, name: str, *overrides: str, rows=ROWS, model: str = "tiny-chroma") -> dict:
    prompts = write_prompts(cli.cwd / f"{name}.jsonl", rows)
    cli(f"dataset.path={prompts}", f"output.dir={name}", *overrides, model=model)
    return pixels(cli.cwd / name)


def max_diff(a: dict, b: dict) -> int:
    assert a.keys() == b.keys() and a
    return max(int(np.abs(a[k].astype(int) - b[k].astype(int)).max()) for k in a)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def refused(cli, *overrides: str, model: str = "tiny-chroma") -> str:
    """The one line of a run refused with exit 2 that wrote nothing."""
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS[:1])
    result = cli(f"dataset.path={prompts}", "output.dir=out", *SMALL, *overrides, check=False, model=model)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert not (cli.cwd / "out" / "run.json").exists()
    return lines[0]


@pytest.mark.parametrize("layout", ["plain", "prefixed"])
def test_the_chroma_preset_renders_a_community_bfl_gguf(cli, tiny_chroma, bfl_files, layout):
    base, _ = tiny_chroma
    got = render(
        cli,
        "bfl",
        *SMALL,
        *AS_TINY,
        f"model.base={base}",
        f"model.transformer={bfl_files[layout]}",
        model="chroma",
    )
    # the same Q8_0 rows as the tiny model's diffusers-layout file: the same pixels, bit for bit
    want = render(cli, "diffusers", *SMALL)
    assert max_diff(got, want) == 0
    assert manifest(cli.cwd / "bfl")[0]["model"] == "chroma"


def test_the_mapped_reader_gives_a_tiny_bfl_files_tensors_as_the_diffusers_file(tiny_chroma, bfl_files):
    """Width 32: diffusers' own Chroma converter splits linear1 at width 3072 and cannot read
    this file; the mapped reader splits by the file's width."""
    from diffusers import ChromaTransformer2DModel, GGUFQuantizationConfig
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from flux_batch.families.chroma import keys
    from flux_batch.gguf.mmap import state_dict

    base, diffusers_file = tiny_chroma
    want = state_dict(diffusers_file)
    model_keys = ChromaTransformer2DModel.from_pretrained(base / "transformer").state_dict().keys()
    assert set(want) == set(model_keys)  # the key table covers every tensor of the model
    assert {p for f in keys.table(list(model_keys), "diffusers") for p in f.parts} == set(model_keys)
    for path in bfl_files.values():
        got = state_dict(path)
        assert got.keys() == want.keys()
        for name, tensor in want.items():
            assert type(got[name]) is type(tensor) and got[name].shape == tensor.shape, name
            assert torch.equal(got[name], tensor), name
            if isinstance(tensor, GGUFParameter):
                assert got[name].quant_type == tensor.quant_type, name
    with pytest.raises(RuntimeError):  # diffusers' converter, at its hard-coded width
        ChromaTransformer2DModel.from_single_file(
            str(bfl_files["plain"]),
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            config=str(base),
            subfolder="transformer",
        )


def test_agreement_with_a_plain_chroma_pipeline_call(cli, tiny_chroma):
    """flux-batch at batch 1 against one ChromaPipeline call per prompt with the transformer
    loaded by diffusers' own reader from the same (diffusers-layout) GGUF file; diffusers'
    converter cannot read a tiny BFL file (test above). Guidance 4 (> 1: classifier-free
    guidance against the default negative prompt ""), same seeds (CPU generators) and
    settings. Measured: two of three images identical, the third 89.0 dB (one value 1/255
    apart: float rounding of the same computation)."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, GGUFQuantizationConfig

    base, gguf = tiny_chroma
    got = render(cli, "fb", "sampler.steps=4", "batch_size=1", "runtime.progress=false")
    transformer = ChromaTransformer2DModel.from_single_file(
        str(gguf),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(base),
        subfolder="transformer",
        torch_dtype=torch.float32,
    )
    pipe = ChromaPipeline.from_pretrained(str(base), transformer=transformer, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for row in ROWS:
        image = pipe(
            row["prompt"],
            num_inference_steps=4,
            guidance_scale=4.0,
            width=64,
            height=64,
            max_sequence_length=32,
            generator=torch.Generator("cpu").manual_seed(row["seed"]),
            output_type="np",
        ).images[0]
        want = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
        assert psnr(got[row["id"], 0], want) >= 48, row  # at most 1/255 apart
        assert int(np.abs(got[row["id"], 0].astype(int) - want.astype(int)).max()) <= 1


def test_an_items_pixels_do_not_depend_on_its_batch(cli):
    one = render(cli, "one", *SMALL, "batch_size=1")
    three = render(cli, "three", *SMALL, "batch_size=3")
    assert max_diff(one, three) <= 2


def test_a_flux1_file_under_the_chroma_preset_is_one_line(cli, tiny_chroma):
    from flux_batch.demo import tiny

    _, flux1_file = tiny.ensure_built("Q8_0")
    line = refused(cli, f"model.base={tiny_chroma[0]}", f"model.transformer={flux1_file}", model="chroma")
    assert line == (
        f"flux-batch: error: model.transformer={flux1_file}: this is a FLUX.1 dev transformer; "
        "model=chroma expects Chroma"
    )


def test_a_chroma_file_under_a_flux1_preset_is_one_line(cli, bfl_files):
    line = refused(cli, f"model.transformer={bfl_files['plain']}", model="tiny")
    assert line.endswith(f"{bfl_files['plain']}: this is a Chroma transformer; model=tiny expects FLUX.1")


def test_gguf_inspect_names_the_family(bfl_files):
    shown = gguf_cli("inspect", bfl_files["prefixed"]).stdout
    assert "model         Chroma, 2 double + 2 single blocks, hidden size 32" in shown
    assert "names prefixed model.diffusion_model." in shown
    import json

    info = json.loads(gguf_cli("inspect", bfl_files["plain"], "--json").stdout)
    assert (info["family"], info["layout"], info["variant"]) == ("chroma", "bfl", "chroma")


def test_files_flux_batch_gguf_quantize_writes_load(cli, tiny_chroma, tmp_path):
    """Both layouts from the tiny folder: the BFL file renders through model=chroma, the
    diffusers one loads in diffusers' own reader with the folder's tensors."""
    from diffusers import ChromaTransformer2DModel, GGUFQuantizationConfig

    base, _ = tiny_chroma
    for layout in ("bfl", "diffusers"):
        gguf_cli(
            "quantize",
            base / "transformer",
            tmp_path / f"{layout}.gguf",
            "--type",
            "Q8_0",
            "--layout",
            layout,
        )
    got = render(
        cli,
        "quantized",
        *SMALL,
        *AS_TINY,
        f"model.base={base}",
        f"model.transformer={tmp_path / 'bfl.gguf'}",
        model="chroma",
    )
    assert max_diff(got, render(cli, "diffusers", *SMALL)) == 0
    model = ChromaTransformer2DModel.from_single_file(
        str(tmp_path / "diffusers.gguf"),
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        config=str(base),
        subfolder="transformer",
    )
    reference = ChromaTransformer2DModel.from_pretrained(base / "transformer").state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == reference.keys()
    norm = "single_transformer_blocks.1.attn.norm_k.weight"  # 1-D: kept in float
    assert torch.equal(loaded[norm], reference[norm])


def lora_file(base: Path, path: Path, seed: int = 1) -> Path:
    """A PEFT LoRA on the attention of the tiny transformer's double blocks."""
    from safetensors.torch import load_file, save_file

    weights = load_file(base / "transformer" / "diffusion_pytorch_model.safetensors")
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, w in sorted(weights.items()):
        module = name.removesuffix(".weight")
        if name.startswith("transformer_blocks.") and module.endswith(
            (".attn.to_q", ".attn.to_k", ".attn.to_v")
        ):
            state[f"transformer.{module}.lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.5
            state[f"transformer.{module}.lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.5
    save_file(state, str(path))
    return path


def test_a_lora_loads_and_merge_lora_bakes_it_in(cli, tiny_chroma, bfl_files, tmp_path):
    base, _ = tiny_chroma
    lora = lora_file(base, tmp_path / "style.safetensors")
    plain = render(cli, "plain", *SMALL)
    runtime = render(cli, "lora", *SMALL, f"lora=[{{path:{lora},scale:1.0}}]")
    baked_file = tmp_path / "baked.gguf"
    gguf_cli("merge-lora", bfl_files["prefixed"], baked_file, "--lora", str(lora), "--type", "Q8_0")
    baked = render(
        cli,
        "baked",
        *SMALL,
        *AS_TINY,
        f"model.base={base}",
        f"model.transformer={baked_file}",
        model="chroma",
    )
    worst = min(psnr(runtime[k], baked[k]) for k in runtime)
    assert worst > 30, worst  # the same update, baked in Q8_0 rather than added at run time
    assert min(psnr(runtime[k], plain[k]) for k in runtime) < worst - 5  # and it does change the image


def test_taylorseer_renders_under_classifier_free_guidance(cli):
    """diffusers' ChromaPipeline sets no cache context: without ours TaylorSeer fails every
    item; with it, the prompt's and the negative prompt's calls keep their own state."""
    steps = ("sampler.steps=6", "sampler.width=64", "sampler.height=64", "runtime.progress=false")
    full = render(cli, "full", *steps)
    cached = render(cli, "cached", *steps, "cache=taylorseer")
    assert len(manifest(cli.cwd / "cached")) == len(ROWS)
    assert 0 < max_diff(full, cached)  # steps 4 and 6 predicted
    assert min(psnr(full[k], cached[k]) for k in full) > 20


def test_runtime_dequantize_once_matches_never(cli):
    """Q8_0 dequantized once at load against at every forward: the same float32 weights;
    measured identical pixels."""
    once = render(cli, "once", *SMALL, "runtime.dequantize=once")
    never = render(cli, "never", *SMALL)
    assert max_diff(once, never) <= 1


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "cache=fbcache",
            "cache=fbcache: not available for model.family=chroma (Chroma); it has none, taylorseer",
        ),
        (
            "sampler.true_cfg=4",
            "sampler.true_cfg=4.0: model.family=chroma (Chroma) has no true classifier-free guidance",
        ),
        ("model.variant=dev", "model.variant=dev: expected chroma"),
    ],
    ids=["fbcache", "true-cfg", "variant"],
)
def test_what_chroma_lacks_is_refused_in_one_line(cli, override, line):
    assert refused(cli, override) == f"flux-batch: error: {line}"


def test_a_negative_prompt_guides_chromas_classifier_free_guidance(cli):
    """Chroma's guidance above 1 is classifier-free guidance: the run's or a row's negative
    prompt takes the empty one's place, with no true CFG asked."""
    from conftest import left_behind, manifest, pixels, write_prompts

    rows = [{"id": "a", "prompt": "a red fox"}, {"id": "b", "prompt": "a red fox", "negative_prompt": "snow"}]
    prompts = write_prompts(cli.cwd / "neg.jsonl", rows)
    common = (f"dataset.path={prompts}", "sampler.steps=2", "runtime.progress=false")
    cli(*common, "output.dir=plain", model="tiny-chroma")
    cli(*common, "output.dir=blurry", "sampler.negative_prompt=blurry", model="tiny-chroma")
    plain, blurry = pixels(cli.cwd / "plain"), pixels(cli.cwd / "blurry")
    assert not np.array_equal(plain["a", 0], blurry["a", 0])  # the run's negative took ""'s place
    assert np.array_equal(plain["b", 0], blurry["b", 0])  # the row's own negative wins
    assert {r["id"]: r["negative_prompt"] for r in manifest(cli.cwd / "blurry")} == {
        "a": "blurry",
        "b": "snow",
    }
    refused = cli(
        *common,
        "output.dir=r",
        "sampler.negative_prompt=x",
        "sampler.guidance=1",
        check=False,
        model="tiny-chroma",
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "flux-batch: error: sampler.negative_prompt has no effect with sampler.guidance=1: this model's "
        "classifier-free guidance takes it above 1 (e.g. 4)"
    ]
    assert left_behind(cli.cwd / "r") == []

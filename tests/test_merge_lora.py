"""`flux-batch-gguf merge-lora`: LoRAs baked into a GGUF render what the same LoRAs render at
run time, in both key layouts, from diffusers' PEFT layout and Kohya's alike."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from conftest import FAST, pixels, write_prompts
from lora_files import low_rank_pairs, shared_qkv_down, write_diffusers_lora, write_kohya_lora
from test_gguf_cli import gguf_cli

ROWS = [{"id": "fox", "prompt": "a red fox in the snow"}, {"id": "owl", "prompt": "an owl at night"}]


@pytest.fixture(scope="module")
def sources(tmp_path_factory, model_cache):
    from flux_batch.demo import tiny
    from flux_batch.gguf.quantize import quantize_checkpoint

    base, q8 = tiny.ensure_built("Q8_0")
    root = tmp_path_factory.mktemp("merge")
    for layout in ("bfl", "diffusers"):
        quantize_checkpoint(base / "transformer", root / f"{layout}-F32.gguf", "F32", layout=layout)
    pairs = shared_qkv_down(low_rank_pairs(model_cache, seed=3, magnitude=1.0))  # as Kohya fuses qkv
    peft = write_diffusers_lora(root / "peft.safetensors", pairs)
    kohya = write_kohya_lora(root / "kohya.safetensors", pairs)
    return root, base, q8, peft, kohya


def render(cli_server, root, base, transformer, name, *extra) -> dict:
    prompts = write_prompts(root / "p.jsonl", ROWS)
    result = cli_server(
        root,
        "model=flux-dev",
        f"model.base={base}",
        f"model.transformer={transformer}",
        f"dataset.path={prompts}",
        f"output.dir={name}",
        *FAST,
        *extra,
    )
    assert result.returncode == 0, result.stdout
    return pixels(root / name)


def psnr(a: dict, b: dict) -> float:
    worst = np.inf
    for key in a:
        mse = np.mean((a[key].astype(float) - b[key].astype(float)) ** 2)
        worst = min(worst, np.inf if mse == 0 else 10 * np.log10(255**2 / mse))
    return worst


def tensors(path) -> dict:
    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        for t in gguf.GGUFReader(path).tensors
    }


@pytest.mark.parametrize("layout", ["bfl", "diffusers"])
def test_a_baked_file_renders_what_the_runtime_lora_renders(sources, cli_server, layout):
    root, base, _, peft, _ = sources
    src = root / f"{layout}-F32.gguf"
    baked = root / f"{layout}-baked-F32.gguf"
    result = gguf_cli("merge-lora", src, baked, "--lora", f"{peft}:0.8", "--type", "F32")
    assert f"{baked}: F32, peft.safetensors x0.8 baked into {src.name}" in result.stdout
    plain = render(cli_server, root, base, src, f"plain-{layout}")
    runtime = render(cli_server, root, base, src, f"runtime-{layout}", f"lora=[{{path:{peft},scale:0.8}}]")
    from_baked = render(cli_server, root, base, baked, f"baked-{layout}")
    assert psnr(from_baked, runtime) > 45  # the same weights, summed in another order
    assert psnr(plain, runtime) < 35  # and the LoRA does change the image


def test_kohya_and_peft_files_bake_the_same_weights(sources, tmp_path):
    root, _, _, peft, kohya = sources
    for layout in ("bfl", "diffusers"):
        src = root / f"{layout}-F32.gguf"
        gguf_cli("merge-lora", src, tmp_path / f"p-{layout}.gguf", "--lora", str(peft), "--type", "F32")
        gguf_cli("merge-lora", src, tmp_path / f"k-{layout}.gguf", "--lora", str(kohya), "--type", "F32")
        a, b, before = (
            tensors(tmp_path / f"p-{layout}.gguf"),
            tensors(tmp_path / f"k-{layout}.gguf"),
            tensors(src),
        )
        assert a.keys() == b.keys() == before.keys()
        changed = [n for n in a if not np.array_equal(a[n], before[n])]
        assert changed and all(np.allclose(a[n], b[n], atol=1e-5) for n in a), layout


def test_a_baked_q8_0_file_renders_close_to_the_runtime_lora_on_q8_0(sources, cli_server):
    root, base, q8, peft, _ = sources
    baked = root / "baked-Q8_0.gguf"
    gguf_cli("merge-lora", root / "bfl-F32.gguf", baked, "--lora", str(peft), "--type", "Q8_0")
    runtime = render(cli_server, root, base, q8, "runtime-q8", f"lora=[{{path:{peft},scale:1}}]")
    assert psnr(render(cli_server, root, base, baked, "baked-q8"), runtime) > 30


def test_bad_loras_are_one_line_errors(sources, tmp_path):
    root, _, _, peft, _ = sources
    src = root / "bfl-F32.gguf"
    import torch

    other = write_diffusers_lora(
        tmp_path / "other.safetensors",  # a layer this model lacks
        {"transformer_blocks.7.attn.to_q": (torch.zeros(4, 8), torch.zeros(8, 4))},
    )
    from safetensors.torch import save_file

    half = tmp_path / "half.safetensors"  # an up matrix without its down
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 4)}, str(half))
    cases = [
        (str(half), "transformer_blocks.0.attn.to_q has lora_B without its pair"),
        (f"{peft}:strong", f"--lora {peft}:strong: the scale after ':' must be a number"),
        (str(tmp_path / "x.ckpt"), "not a .safetensors file"),
        (str(other), "transformer_blocks.7.attn.to_q is not a layer of this transformer"),
    ]
    for lora, message in cases:
        result = gguf_cli(
            "merge-lora", src, tmp_path / "o.gguf", "--lora", lora, "--type", "Q8_0", check=False
        )
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o.gguf").exists()


def test_a_peft_alpha_scales_the_update_by_alpha_over_rank(sources, tmp_path):
    """alpha = rank / 2 on every layer bakes what scale 0.5 bakes (as PEFT scales at run time)."""
    import torch
    from safetensors.torch import load_file, save_file

    root, _, _, peft, _ = sources
    state = load_file(peft)
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        state[key.replace(".lora_A.weight", ".alpha")] = torch.tensor(state[key].shape[0] / 2)
    save_file(state, str(tmp_path / "alpha.safetensors"))
    src = root / "bfl-F32.gguf"
    gguf_cli(
        "merge-lora", src, tmp_path / "a.gguf", "--lora", str(tmp_path / "alpha.safetensors"), "--type", "F32"
    )
    gguf_cli("merge-lora", src, tmp_path / "h.gguf", "--lora", f"{peft}:0.5", "--type", "F32")
    a, h = tensors(tmp_path / "a.gguf"), tensors(tmp_path / "h.gguf")
    assert all(np.allclose(a[n], h[n], atol=1e-6) for n in a)

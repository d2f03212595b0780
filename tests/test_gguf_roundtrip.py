"""A full-width FLUX transformer (hidden size 3072, one double and one single block, 545.5 M
parameters) quantized to a BFL-layout GGUF by the installed script, read back by the reference
reader, loaded by diffusers' from_single_file, compared with the unquantized model, and
rendered by flux-batch. Slow: about a minute and 4 GB of memory."""

from __future__ import annotations

import json

import gguf
import pytest

import flux_wide
from conftest import manifest
from test_gguf_cli import gguf_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wide(tmp_path_factory, model_cache):
    root = tmp_path_factory.mktemp("wide")
    transformer = flux_wide.build_transformer(root / "transformer")
    pipeline = flux_wide.build_pipeline(root / "pipeline", model_cache / "tiny-v1", transformer)
    out = root / "wide-Q8_0.gguf"
    result = gguf_cli("quantize", transformer, out, "--type", "Q8_0")
    assert "Q8_0, bfl layout, 52 tensors (F16 10, F32 29, Q8_0 13)" in result.stdout
    return transformer, pipeline, out


def test_reference_reader_sees_bfl_names_types_and_shapes(wide):
    _, _, out = wide
    tensors = {t.name: t for t in gguf.GGUFReader(out).tensors}
    expected = {  # name: (torch shape, type)
        "img_in.weight": ((3072, 64), "F16"),
        "txt_in.weight": ((3072, 4096), "F16"),
        "guidance_in.in_layer.weight": ((3072, 256), "F16"),
        "double_blocks.0.img_attn.qkv.weight": ((9216, 3072), "Q8_0"),
        "double_blocks.0.img_attn.qkv.bias": ((9216,), "F32"),
        "double_blocks.0.txt_mod.lin.weight": ((18432, 3072), "Q8_0"),
        "double_blocks.0.img_attn.norm.query_norm.scale": ((128,), "F32"),
        "single_blocks.0.linear1.weight": ((21504, 3072), "Q8_0"),
        "single_blocks.0.linear2.weight": ((3072, 15360), "Q8_0"),
        "final_layer.adaLN_modulation.1.weight": ((6144, 3072), "F16"),
        "final_layer.linear.weight": ((64, 3072), "F16"),
    }
    for name, (shape, kind) in expected.items():
        assert tuple(int(d) for d in reversed(tensors[name].shape)) == shape, name
        assert tensors[name].tensor_type.name == kind, name
    assert not any(t.tensor_type.name == "BF16" for t in tensors.values())
    assert all(t.tensor_type.name in ("F32", "F16") for t in tensors.values() if len(t.shape) == 1)


def test_q8_0_output_matches_the_unquantized_model(wide):
    transformer, pipeline, out = wide
    info = json.loads(gguf_cli("inspect", out, "--json").stdout)
    assert (info["architecture"], info["layout"], info["variant"]) == ("flux", "bfl", "dev")
    assert (info["double_blocks"], info["single_blocks"], info["hidden_size"]) == (1, 1, 3072)
    assert info["parameters"] == 545_548_096

    want = flux_wide.forward(flux_wide.load_reference(transformer))
    model = flux_wide.load_gguf(out, pipeline)
    assert info["loaded_bytes"]["float32"] == sum(p.numel() * p.element_size() for p in model.parameters())
    got = flux_wide.forward(model)
    error = flux_wide.relative_l2(got, want)
    print(f"Q8_0 relative L2 error of the output: {error:.5f}")
    assert 0 < error < 0.01


def test_flux_batch_renders_the_quantized_file(wide, cli, tmp_path):
    _, pipeline, out = wide
    prompts = tmp_path / "p.txt"
    prompts.write_text("a lighthouse at dusk\n")
    result = cli(
        f"dataset.path={prompts}",
        f"model.base={pipeline}",
        f"model.transformer={out}",
        "sampler.steps=2",
        "output.dir=wide",
    )
    assert "rendered 1, skipped 0 already done, failed 0" in result.stdout
    [record] = manifest(cli.cwd / "wide")
    assert (record["width"], record["height"], record["model"]) == (64, 64, "tiny")
    assert (cli.cwd / "wide" / record["file_name"]).stat().st_size > 0

"""Loading a GGUF transformer from its memory-mapped file gives exactly what diffusers' own
copying reader gives: the same tensors, outputs and pixels, without copying the weights."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_q8(model_cache):
    from flux_batch.demo import tiny

    return tiny.ensure_built("Q8_0")  # (base folder, GGUF file)


def load(gguf, base, lean: bool):
    from flux_batch.model.load import load_transformer

    return load_transformer(str(gguf), str(base), torch.float32, lean=lean)


def mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `path`."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith(str(path)):
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def forward(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    image = torch.randn(1, 16, cfg.in_channels, generator=g)
    text = torch.randn(1, 8, cfg.joint_attention_dim, generator=g)
    with torch.no_grad():
        return model(
            hidden_states=image,
            encoder_hidden_states=text,
            pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([3.5]),
            img_ids=torch.zeros(16, 3),
            txt_ids=torch.zeros(8, 3),
            return_dict=False,
        )[0]


def test_the_same_tensors_as_diffusers_reader_with_quantized_weights_left_in_the_file(tiny_q8):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    base, gguf = tiny_q8
    stock, lean = load(gguf, base, lean=False), load(gguf, base, lean=True)
    stock_params, lean_params = dict(stock.named_parameters()), dict(lean.named_parameters())
    assert stock_params.keys() == lean_params.keys()
    ranges = mapped_ranges(gguf)
    quantized = 0
    for name, want in stock_params.items():
        got = lean_params[name]
        assert (type(got), got.dtype, got.shape) == (type(want), want.dtype, want.shape), name
        assert torch.equal(got, want), name
        if isinstance(got, GGUFParameter):
            quantized += 1
            assert got.quant_type == want.quant_type, name
            assert any(start <= got.data_ptr() < end for start, end in ranges), f"{name} was copied"
            assert not any(start <= want.data_ptr() < end for start, end in ranges)
    assert quantized >= 10
    assert torch.equal(forward(lean), forward(stock))


def test_identical_pixels_through_the_pipeline(tiny_q8):
    from flux_batch import families

    FluxPipeline = families.get("flux1").pipeline_class()

    base, gguf = tiny_q8
    pipe = FluxPipeline.from_pretrained(
        base, transformer=load(gguf, base, lean=False), dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    images = []
    for lean in (False, True):
        if lean:
            pipe.transformer = load(gguf, base, lean=True)
        images.append(
            pipe(
                "a red fox",
                height=32,
                width=32,
                num_inference_steps=2,
                generator=torch.Generator().manual_seed(3),
                output_type="np",
                max_sequence_length=32,
            ).images
        )
    assert images[0].shape == (1, 32, 32, 3)
    assert np.array_equal(images[0], images[1])


def test_a_file_replaced_by_rename_while_loaded_leaves_the_model_intact(tiny_q8, tmp_path):
    base, gguf = tiny_q8
    copy = tmp_path / "t.gguf"
    shutil.copy(gguf, copy)
    model = load(copy, base, lean=True)
    before = forward(model)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"\0" * copy.stat().st_size)
    os.replace(other, copy)  # what flux-batch-gguf quantize does to an existing output
    assert torch.equal(forward(model), before)


def test_a_bfl_layout_file_is_split_into_views_equal_to_the_diffusers_layout_file(tiny_q8, tmp_path):
    """The same weights quantized in the Black Forest Labs layout (fused qkv and linear1,
    swapped final norm) load to exactly the tensors of the diffusers-layout file, the parts of
    fused tensors as views of the mapped file, not copies."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from flux_batch.gguf.quantize import quantize_checkpoint

    base, gguf = tiny_q8
    bfl = tmp_path / "bfl.gguf"
    quantize_checkpoint(base / "transformer", bfl, "Q8_0", layout="bfl")
    want = dict(load(gguf, base, lean=False).named_parameters())
    got = dict(load(bfl, base, lean=True).named_parameters())
    assert got.keys() == want.keys()
    ranges = mapped_ranges(bfl)
    for name in want:
        assert (type(got[name]), got[name].dtype) == (type(want[name]), want[name].dtype), name
        assert torch.equal(got[name], want[name]), name
    q = got["single_transformer_blocks.0.attn.to_q.weight"]
    assert isinstance(q, GGUFParameter) and any(s <= q.data_ptr() < e for s, e in ranges)


def test_a_bfl_dict_with_tensors_outside_the_flux_table_is_left_to_diffusers():
    from flux_batch.gguf.mmap import diffusers_layout

    tensors = {"img_in.weight": torch.zeros(4, 2), "double_blocks.0.unknown.weight": torch.zeros(1)}
    assert diffusers_layout(tensors) is tensors

"""The torch quantizers are bit-exact with the gguf package's reference, including edge cases."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from flux_batch.gguf.quants import quantize

TYPES = ["Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "BF16", "F16", "F32"]


def hard_rows() -> np.ndarray:
    """Rows of 64 values: normal noise plus blocks of zeros, denormals, extremes and ties."""
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((40, 64)).astype(np.float32)]
    rows.append(np.zeros((2, 64), np.float32))
    tiny = np.finfo(np.float32).smallest_subnormal
    rows.append((rng.integers(-50, 50, (4, 64)) * tiny).astype(np.float32))  # all denormal
    mixed = rng.standard_normal((4, 64)).astype(np.float32)
    mixed[:, ::3] = tiny * 7  # denormals beside normal values
    rows.append(mixed)
    big = np.finfo(np.float32).max
    rows.append(np.array([[big, -big] * 32, [big] * 64, [-big / 3] * 64], np.float32))
    rows.append((rng.standard_normal((4, 64)) * 1e-30).astype(np.float32))
    rows.append((rng.standard_normal((4, 64)) * 1e30).astype(np.float32))
    ties = np.tile(np.array([1.0, -1.0, 0.5, -0.5, 2.5, -127.5], np.float32), 11)[:64]
    rows.append(np.stack([ties, ties * 3, -ties, ties + 1]))  # equal magnitudes, halfway values
    rows.append(np.tile(np.float32([-3, 1, 3, 2]), 16)[None])  # -m before +m: the first wins
    rows.append(np.full((1, 64), -0.0, np.float32))
    below_half = np.nextafter(np.float32(0.5), np.float32(0))  # |v| + 0.5 rounds up to 1 in float32
    rows.append(np.tile(np.array([127, below_half, -below_half, 0.5], np.float32), 16)[None])
    return np.concatenate(rows)


@pytest.mark.parametrize("ggml_type", TYPES)
def test_bit_exact_with_reference_on_hard_values(ggml_type):
    data = hard_rows()
    with np.errstate(all="ignore"):
        expected = gguf.quants.quantize(data, gguf.GGMLQuantizationType[ggml_type])
    got = quantize(torch.from_numpy(data), ggml_type)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_1", "BF16"])
def test_bit_exact_on_a_large_matrix_spanning_chunks(ggml_type, monkeypatch):
    import flux_batch.gguf.quants as quants

    monkeypatch.setattr(quants, "CHUNK_ELEMENTS", 4096)  # many chunks, one ragged
    data = np.random.default_rng(1).standard_normal((300, 96)).astype(np.float32) * 0.02
    expected = gguf.quants.quantize(data, gguf.GGMLQuantizationType[ggml_type])
    assert quantize(data, ggml_type).tobytes() == expected.tobytes()


def test_bf16_keeps_nan_sign_and_payload_like_the_reference():
    payloads = np.array(
        [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FFFFFFF, 0x7F800000], np.uint32
    ).view(np.float32)
    data = np.concatenate([payloads, np.float32([1.0, -2.5])])[None]
    with np.errstate(all="ignore"):
        expected = gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16)
    assert quantize(data, "BF16").tobytes() == expected.tobytes()


def test_bfloat16_input_is_quantized_from_its_exact_values():
    data = torch.randn(8, 64).to(torch.bfloat16)
    expected = gguf.quants.quantize(data.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert quantize(data, "Q8_0").tobytes() == expected.tobytes()


def test_row_not_a_multiple_of_the_block_is_refused():
    with pytest.raises(ValueError, match="row size 40 is not a multiple of the Q4_0 block"):
        quantize(np.ones((2, 40), np.float32), "Q4_0")

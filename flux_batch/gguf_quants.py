"""GGML block quantization in vectorized torch, bit-exact with `gguf.quants.quantize`.

The `gguf` package's numpy reference is correct but slow (many temporaries, 16 rows at a
time); these kernels do the same float32 arithmetic in the same order on large chunks, on
all CPU threads. Values that the reference turns into NaN (a block whose scale underflows)
are cast to 0, as numpy's float-to-int cast does on x86 and ARM.
"""
from __future__ import annotations

import numpy as np
import torch

# (elements per block, bytes per block) of the types written here, as in gguf.GGML_QUANT_SIZES
BLOCK = {"Q8_0": (32, 34), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q4_0": (32, 18),
         "Q4_1": (32, 20), "BF16": (1, 2), "F16": (1, 2), "F32": (1, 4)}
CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per step: big enough to vectorize, small for cache


def quantize(x: torch.Tensor | np.ndarray, ggml_type: str) -> np.ndarray:
    """`x` (float, last dim a multiple of the block) as GGML `ggml_type` data.

    Returns what gguf.quants.quantize returns: float32/float16 arrays for F32/F16, else
    uint8 of shape (*x.shape[:-1], bytes per row).
    """
    x = torch.as_tensor(x)
    if ggml_type == "F32":
        return x.to(torch.float32).numpy()
    if ggml_type == "F16":
        return x.to(torch.float16).numpy()
    block, type_size = BLOCK[ggml_type]
    if x.shape[-1] % block:
        raise ValueError(f"row size {x.shape[-1]} is not a multiple of the {ggml_type} block ({block})")
    kernel = KERNELS[ggml_type]
    blocks = x.reshape(-1, block)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    out_t = torch.from_numpy(out)
    step = max(1, CHUNK_ELEMENTS // block)
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start:start + step].to(torch.float32)
        out_t[start:start + step] = kernel(chunk)
    return out.reshape(*x.shape[:-1], x.shape[-1] // block * type_size)


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).view(torch.uint8)


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / d)


def _to_uint8(v: torch.Tensor, high: int) -> torch.Tensor:
    return torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).to(torch.uint8).clamp_(0, high)


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    # the reference's roundf: floor(|v|) + floor(2 * frac), exact in float32 (not floor(v + 0.5))
    a = v.abs()
    floored = a.floor()
    return torch.sign(v) * (floored + (2 * (a - floored)).floor())


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """Element i of the first half in the low nibble of byte i, of the second half in the high."""
    half = q.shape[1] // 2
    return (q[:, :half] & 0x0F) | (q[:, half:] << 4)


def _high_bits(q: torch.Tensor) -> torch.Tensor:
    """Bit 4 of each of 32 values, packed little-endian into 4 bytes."""
    bits = ((q >> 4) & 1).view(-1, 4, 8).to(torch.int32)
    weights = torch.tensor([1 << k for k in range(8)], dtype=torch.int32)
    return (bits * weights).sum(-1).to(torch.uint8)


def _q8_0(x: torch.Tensor) -> torch.Tensor:
    d = x.abs().amax(1, keepdim=True) / 127
    q = _round_half_away(x * _inverse(d))
    q = torch.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0).to(torch.int8).view(torch.uint8)
    return torch.cat([_f16_bytes(d), q], 1)


def _symmetric(levels: int):
    """Q4_0 / Q5_0: scale from the signed value of largest magnitude, offset `levels / 2`."""
    def kernel(x: torch.Tensor) -> torch.Tensor:
        peak = x.gather(1, x.abs().argmax(1, keepdim=True))
        d = peak / -(levels // 2)
        q = _to_uint8(torch.trunc(x * _inverse(d) + (levels // 2 + 0.5)), levels - 1)
        parts = [_f16_bytes(d)] + ([_high_bits(q)] if levels == 32 else []) + [_nibbles(q)]
        return torch.cat(parts, 1)
    return kernel


def _affine(levels: int):
    """Q4_1 / Q5_1: scale and minimum per block."""
    def kernel(x: torch.Tensor) -> torch.Tensor:
        low = x.amin(1, keepdim=True)
        d = (x.amax(1, keepdim=True) - low) / (levels - 1)
        q = _to_uint8(torch.trunc((x - low) * _inverse(d) + 0.5), levels - 1)
        parts = [_f16_bytes(d), _f16_bytes(low)]
        parts += ([_high_bits(q)] if levels == 32 else []) + [_nibbles(q)]
        return torch.cat(parts, 1)
    return kernel


def _bf16(x: torch.Tensor) -> torch.Tensor:
    # ggml_compute_fp32_to_bf16: quiet NaNs, then round to nearest even on the raw bits
    n = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    n = torch.where((n & 0x7FFFFFFF) > 0x7F800000, (n & 0xFFFF0000) | (64 << 16), n)
    n = ((n + (0x7FFF + ((n >> 16) & 1))) >> 16) & 0xFFFF
    return torch.stack([n & 0xFF, n >> 8], -1).to(torch.uint8).view(-1, 2)


KERNELS = {"Q8_0": _q8_0, "Q5_0": _symmetric(32), "Q5_1": _affine(32), "Q4_0": _symmetric(16),
           "Q4_1": _affine(16), "BF16": _bf16}

"""GGML block quantization in vectorized torch, bit-exact with `gguf.quants.quantize`.

The `gguf` package's numpy reference is correct but slow (a dozen full passes over 16 rows
at a time). These kernels give the same bytes from fewer passes (truncating casts instead of
trunc and round, packing on int64 words) over cache-sized chunks, one chunk per CPU thread.
Values the reference turns into NaN (a block whose scale underflows) are cast to 0, as
numpy's float-to-int cast does on x86.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# (elements per block, bytes per block) of the types written here, as in gguf.GGML_QUANT_SIZES
BLOCK = {
    "Q8_0": (32, 34),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "BF16": (1, 2),
    "F16": (1, 2),
    "F32": (1, 4),
}
CHUNK_ELEMENTS = 1 << 18  # 1 MiB of float32 per step: its temporaries stay in the CPU cache
WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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

    def run(start: int) -> None:
        kernel(blocks[start : start + step].to(torch.float32), out_t[start : start + step])

    starts = range(0, blocks.shape[0], step)
    workers = min(len(starts), WORKERS)
    if workers <= 1:
        for start in starts:
            run(start)
    else:
        # chunks in parallel, each op single-threaded: torch's own intra-op threads wait
        # for each other after every op, which stalls on a busy machine
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                list(pool.map(run, starts))
        finally:
            torch.set_num_threads(threads)
    return out.reshape(*x.shape[:-1], x.shape[-1] // block * type_size)


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).view(torch.uint8)


def _inverse(d: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """1/d, 0 where d is 0; and whether any is infinite (a denormal scale), which makes NaNs."""
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    return inv, bool(torch.isinf(inv).any())


def _finite(v: torch.Tensor, needed: bool) -> torch.Tensor:
    return torch.nan_to_num_(v, nan=0.0, posinf=0.0, neginf=0.0) if needed else v


# The bit tricks below work on 8 bytes at once through int64 views of the (blocks, 32) bytes.
LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F
LOW_BITS = 0x0101010101010101
GATHER_BITS = 0x0102040810204080  # moves bit 0 of byte k to bit 56 + k, without carries


def _nibbles(q: torch.Tensor, out: torch.Tensor) -> None:
    """Element i of the first half in the low nibble of byte i, of the second half in the high."""
    words = q.view(torch.int64)  # (blocks, 4): elements 0-15 in words 0-1, 16-31 in words 2-3
    packed = (words[:, :2] & LOW_NIBBLES) | ((words[:, 2:] & LOW_NIBBLES) << 4)
    out.copy_(packed.view(torch.uint8))


def _high_bits(q: torch.Tensor, out: torch.Tensor) -> None:
    """Bit 4 of each of 32 values, packed little-endian into 4 bytes."""
    bits = (q.view(torch.int64) >> 4) & LOW_BITS  # bit 4 of byte k now at bit 8k
    out.copy_(((bits * GATHER_BITS) >> 56 & 0xFF).to(torch.uint8))


# The largest float32 below 0.5. trunc(v + copysign(HALF_DOWN, v)) is the reference's roundf
# (halves away from zero) for every |v| <= 2**22: an exact half still reaches the next integer,
# while v + 0.5 would wrongly round 0.49999997 up to 1. The cast to int truncates.
HALF_DOWN = float(np.nextafter(np.float32(0.5), np.float32(0)))


def _q8_0(x: torch.Tensor, out: torch.Tensor) -> None:
    d = x.abs().amax(1, keepdim=True) / 127
    inv, nans = _inverse(d)
    v = x * inv
    v += torch.copysign(torch.tensor(HALF_DOWN), v)
    out[:, :2] = _f16_bytes(d)
    out[:, 2:] = _finite(v, nans).to(torch.int8).view(torch.uint8)


def _peak(x: torch.Tensor) -> torch.Tensor:
    """Per block, the signed value of largest magnitude, the first one on a tie (as argmax)."""
    low, high = x.amin(1, keepdim=True), x.amax(1, keepdim=True)  # faster than aminmax
    peak = torch.where(-low > high, low, high)
    tie = (-low == high) & (high != 0)
    if bool(tie.any()):  # +m and -m both present: the first one wins
        rows = tie.view(-1)
        peak[rows] = x[rows].gather(1, x[rows].abs().argmax(1, keepdim=True))
    return peak


def _symmetric(levels: int):
    """Q4_0 / Q5_0: scale from the signed value of largest magnitude, offset `levels / 2`."""

    def kernel(x: torch.Tensor, out: torch.Tensor) -> None:
        peak = _peak(x)
        d = peak / -(levels // 2)
        inv, nans = _inverse(d)
        v = (x * inv).add_(levels // 2 + 0.5)  # >= 0.5: the cast truncates
        q = _finite(v, nans).to(torch.int32).clamp_(0, levels - 1).to(torch.uint8)  # int32: faster
        out[:, :2] = _f16_bytes(d)
        if levels == 32:
            _high_bits(q, out[:, 2:6])
        _nibbles(q, out[:, -16:])

    return kernel


def _affine(levels: int):
    """Q4_1 / Q5_1: scale and minimum per block."""

    def kernel(x: torch.Tensor, out: torch.Tensor) -> None:
        low, high = x.amin(1, keepdim=True), x.amax(1, keepdim=True)  # faster than aminmax
        d = (high - low) / (levels - 1)
        inv, nans = _inverse(d)
        v = (x - low).mul_(inv).add_(0.5)  # >= 0: the cast truncates
        q = _finite(v, nans).to(torch.int32).clamp_(0, levels - 1).to(torch.uint8)  # int32: faster
        out[:, :2] = _f16_bytes(d)
        out[:, 2:4] = _f16_bytes(low)
        if levels == 32:
            _high_bits(q, out[:, 4:8])
        _nibbles(q, out[:, -16:])

    return kernel


def _bf16(x: torch.Tensor, out: torch.Tensor) -> None:
    # ggml_compute_fp32_to_bf16 rounds to nearest even like torch's cast; it differs only in
    # the NaN it makes (sign and payload kept, quiet bit set), so NaNs take the exact path
    bits = x.to(torch.bfloat16).view(torch.uint8).view(-1, 2)
    nan = torch.isnan(x).view(-1)
    if bool(nan.any()):
        n = x.view(-1)[nan].view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        n = (n & 0xFFFF0000) | (64 << 16)
        n = ((n + 0x7FFF + ((n >> 16) & 1)) >> 16) & 0xFFFF
        bits[nan] = torch.stack([n & 0xFF, n >> 8], -1).to(torch.uint8)
    out.copy_(bits)


KERNELS = {
    "Q8_0": _q8_0,
    "Q5_0": _symmetric(32),
    "Q5_1": _affine(32),
    "Q4_0": _symmetric(16),
    "Q4_1": _affine(16),
    "BF16": _bf16,
}

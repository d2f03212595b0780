"""Quantization speed: flux-batch's torch kernels against gguf.quants.quantize, per tensor.

    python bench/gguf_speed.py            # writes the "GGUF quantization speed" section

Each type quantizes the weight shapes of one FLUX.1 double block (attention projection,
fused qkv, MLP in and out: 113 M values) with both implementations, in the same process,
one after the other, best of 3 per tensor (the machine is shared; the best run is the one
least disturbed). MB/s counts float32 input bytes. Both outputs are compared byte for byte.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.results import machine, write_section  # noqa: E402
from flux_batch.gguf.quants import quantize  # noqa: E402

SHAPES = [(3072, 3072), (9216, 3072), (12288, 3072), (3072, 12288)]
TYPES = ["Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "BF16", "F16"]  # F32 is a no-op copy in both
REPEATS = 3


def best_seconds(fn, repeats: int = REPEATS) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    load = machine()
    g = torch.Generator().manual_seed(0)
    tensors = [(torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16).float() for s in SHAPES]
    mb = sum(t.numel() * 4 for t in tensors) / 1e6
    rows = [
        "| type | gguf.quants MB/s | flux-batch MB/s | speed-up | identical bytes |",
        "|---|---:|---:|---:|---|",
    ]
    for kind in TYPES:
        ref_s = ours_s = 0.0
        same = True
        for t in tensors:
            array = t.numpy()
            # each lambda is called (and done with) before the loop moves on: bind them anyway
            s1, expected = best_seconds(
                lambda array=array, kind=kind: gguf.quants.quantize(array, gguf.GGMLQuantizationType[kind])
            )
            s2, got = best_seconds(lambda t=t, kind=kind: quantize(t, kind))
            ref_s, ours_s = ref_s + s1, ours_s + s2
            same &= np.asarray(got).tobytes() == np.asarray(expected).tobytes()
        rows.append(
            f"| {kind} | {mb / ref_s:.0f} | {mb / ours_s:.0f} | {ref_s / ours_s:.1f}x | "
            f"{'yes' if same else 'NO'} |"
        )
        print(rows[-1], flush=True)
    body = (
        f"{mb:.0f} MB of float32 weights per type (shapes {', '.join('x'.join(map(str, s)) for s in SHAPES)}), "
        f"best of {REPEATS} per tensor.\n\n" + "\n".join(rows)
    )
    write_section("gguf_speed", "GGUF quantization speed", body, ("torch", "numpy", "gguf"), load)


if __name__ == "__main__":
    main()

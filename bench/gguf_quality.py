"""Quality per GGUF type on a full-width random FLUX transformer.

    python bench/gguf_quality.py          # writes the "GGUF quality per type" section

The model is the tests' full-width FLUX.1-dev transformer (hidden size 3072, one double and
one single block, 545.5 M parameters, bf16, seed 0). Each type is written by
flux_batch.gguf.quantize in the BFL layout, then:
- bits/weight: 8 x tensor bytes / parameters, over the whole file (F32/F16 tensors included);
- size vs BF16: file size over the BF16 file's;
- weight relative RMSE: ||dequantized - source|| / ||source|| over every tensor, read back with
  gguf.quants.dequantize;
- output relative L2: one forward pass of diffusers' from_single_file model (float32 compute)
  against the unquantized model, on fixed random inputs (16 image and 8 text tokens).
Random weights are uniform, not the heavy-tailed weights of a trained model, so real errors
are larger; the ranking of the types is what carries over.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import gguf  # noqa: E402
import numpy as np  # noqa: E402

import flux_wide  # noqa: E402
from bench.results import machine, write_section  # noqa: E402
from flux_batch.gguf.checkpoint import open_checkpoint, plan  # noqa: E402
from flux_batch.gguf.quantize import quantize_checkpoint  # noqa: E402

NOTE = "Bits/weight counts the whole file: with one double and one single block, the F16 input and output layers hold 12% of the parameters (0.5% in FLUX.1-dev's 19 + 38 blocks), so a full model comes close to the type's own rate (Q8_0 8.5, Q5_1 6.0, Q5_0 5.5, Q4_1 5.0, Q4_0 4.5)."
TYPES = ["BF16", "F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]  # F32 is the reference itself


def weight_error(path: Path, source: dict) -> float:
    err = ref = 0.0
    for t in gguf.GGUFReader(path).tensors:
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float64)
        want = source[t.name].load().float().numpy().reshape(-1).astype(np.float64)
        err += float(np.square(got - want).sum())
        ref += float(np.square(want).sum())
    return (err / ref) ** 0.5


def main() -> None:
    load = machine()
    work = Path(tempfile.mkdtemp(prefix="gguf-quality-"))
    try:
        transformer = flux_wide.build_transformer(work / "transformer")
        config = work / "config"
        (config / "transformer").mkdir(parents=True)
        shutil.copy(transformer / "config.json", config / "transformer" / "config.json")
        want = flux_wide.forward(flux_wide.load_reference(transformer))
        gc.collect()
        source = {t.name: t for t in plan(open_checkpoint(transformer), "bfl")}
        rows = [
            "| type | bits/weight | file MiB | size vs BF16 | weight rel. RMSE | output rel. L2 | quantize s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        bf16_size = None
        for kind in TYPES:
            out = work / f"{kind}.gguf"
            start = time.perf_counter()
            result = quantize_checkpoint(transformer, out, kind)
            seconds = time.perf_counter() - start
            size = out.stat().st_size
            bf16_size = bf16_size or size
            tensor_bytes = sum(b for _, b in result.stats.types.values())
            bits = 8 * tensor_bytes / result.stats.values
            model = flux_wide.load_gguf(out, config)
            output = flux_wide.relative_l2(flux_wide.forward(model), want)
            del model
            gc.collect()
            rows.append(
                f"| {kind} | {bits:.2f} | {size / 2**20:.0f} | {size / bf16_size:.3f} | "
                f"{weight_error(out, source):.2e} | {output:.2e} | {seconds:.1f} |"
            )
            print(rows[-1], flush=True)
            out.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = (
        "Full-width random FLUX.1-dev transformer (hidden 3072, 1 double + 1 single block, "
        "545.5 M parameters), BFL layout. " + NOTE + "\n\n" + "\n".join(rows)
    )
    write_section("gguf_quality", "GGUF quality per type", body, ("torch", "diffusers", "gguf"), load)


if __name__ == "__main__":
    main()

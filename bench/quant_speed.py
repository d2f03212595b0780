"""Q8_0 GGUF against the unquantized transformer: seconds per denoising step and peak memory,
on the mid-size random model (bench/mid_model.py), each in its own process.

    python bench/quant_speed.py [--steps 8] [--batch-sizes 1,4] [--threads 1] [--repeat 3]

Each variant loads the same weights its own way: `float32` the diffusers safetensors
(plain nn.Linear), `Q8_0` and `BF16` the GGUF files through from_single_file (weights
dequantized to float32 on every forward, `runtime.dequantize=never`), `Q8_0 once` and `BF16
once` the same files dequantized once after loading (`runtime.dequantize=once`,
model/dequantize.py). One warm-up step, then --steps transformer calls timed at 128x128 with 32
text tokens, each variant in its own process; --repeat rounds in alternating order, medians
of the seconds and of each round's ratio to float32. Peak memory is the process's peak
resident set (VmHWM), which includes imports and loading; the weights' own bytes are listed
beside it. Target: `Q8_0 once` within 1.05x of float32.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import mid_model  # noqa: E402
from bench.results import machine, write_section  # noqa: E402

VARIANTS = ("float32", "Q8_0", "Q8_0 once", "BF16", "BF16 once")


def measure(folder: str, variant: str, steps: int, batch: int) -> dict:
    """Runs in the child process: load one variant, time `steps` transformer calls."""
    import time

    import torch
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    if variant == "float32":
        model = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer")
    else:
        model = FluxTransformer2DModel.from_single_file(
            f"{folder}/transformer-{variant.split()[0]}.gguf",
            config=folder,
            subfolder="transformer",
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            dtype=torch.float32,
        )
        if variant.endswith(" once"):
            from flux_batch.model.dequantize import dequantize

            dequantize(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    tokens, text = 64, 32  # 128x128: (128/16)^2 image tokens
    inputs = dict(
        hidden_states=torch.randn(batch, tokens, 64, generator=g),
        encoder_hidden_states=torch.randn(batch, text, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.full((batch,), 0.5),
        guidance=torch.full((batch,), 3.5),
        img_ids=torch.zeros(tokens, 3),
        txt_ids=torch.zeros(text, 3),
        return_dict=False,
    )
    with torch.no_grad():
        model(**inputs)
        started = time.perf_counter()
        for _ in range(steps):
            model(**inputs)
        seconds = (time.perf_counter() - started) / steps
    # VmHWM: this process image's own peak (ru_maxrss survives exec and would carry the parent's)
    status = Path("/proc/self/status").read_text()
    peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    return {"seconds_per_step": seconds, "peak_rss": peak, "weight_bytes": weight_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        folder, variant, steps, batch = a.child
        print(json.dumps(measure(folder, variant, int(steps), int(batch))))
        return
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="flux-batch-quant-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(work / "cache"))
    folder = mid_model.build(work / "mid")
    rows = [
        "| batch | transformer | s/step | vs float32 | weights MiB | peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    verdicts = []
    for batch in (int(b) for b in a.batch_sizes.split(",")):
        runs: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
        for r in range(a.repeat):  # alternating order: drift in the machine's speed cancels out
            for variant in VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS)):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", str(folder), variant, str(a.steps), str(batch)],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    raise SystemExit(f"{variant}: {out.stderr[-2000:]}")
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(batch, r, {v: round(x[-1]["seconds_per_step"], 3) for v, x in runs.items()}, flush=True)
        for variant, found in runs.items():
            ratio = statistics.median(
                f["seconds_per_step"] / base["seconds_per_step"] for f, base in zip(found, runs["float32"])
            )
            seconds = statistics.median(f["seconds_per_step"] for f in found)
            rows.append(
                f"| {batch} | {variant} | {seconds:.3f} | {ratio:.2f} | "
                f"{found[0]['weight_bytes'] / 2**20:.0f} | "
                f"{statistics.median(f['peak_rss'] for f in found) / 2**20:.0f} |"
            )
            if variant == "Q8_0 once":
                verdicts.append(f"batch {batch}: {ratio:.2f}x, {'met' if ratio <= 1.05 else 'NOT met'}")
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (
        f"Mid-size random transformer ({mid_model.parameters(folder) / 1e6:.0f} M parameters, "
        f"hidden {mid_model.HIDDEN_HEADS * mid_model.HEAD_DIM}), 128x128, {a.steps} timed steps "
        f"after one warm-up, torch threads: {a.threads or 'default'}, medians of {a.repeat} "
        f"alternating rounds; load average at the end {end_load}.\n\n"
        + "\n".join(rows)
        + "\n\nTarget `Q8_0 once` within 1.05x of float32 s/step: "
        + "; ".join(verdicts)
        + "."
    )
    write_section(
        "quant_speed",
        "Q8_0 vs unquantized transformer (CPU)",
        body,
        ("torch", "diffusers", "gguf"),
        start_load,
    )


if __name__ == "__main__":
    main()

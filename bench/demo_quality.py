"""The demo model's quality: prompt adherence and quantization fidelity, through the real CLI.

    python bench/demo_quality.py          # writes the "Demo model quality" section

Renders the fixed evaluation prompts (flux_batch/prompts/demo-eval.jsonl: 36 prompts) with 2
seeds each as one `flux-batch -m quant=q8_0,f32,q4_0` multirun (batch_size 8, the model's
default steps and guidance), scores each run with `flux-batch-eval` (colour, shape, size and
position accuracy; PSNR against the unquantized F32 run), and records the shipped files'
sizes and the training time from the model's training.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.results import machine, write_section  # noqa: E402
from flux_batch.demo import VERSION, model_dir  # noqa: E402
from flux_batch.demo.evaluation import evaluate  # noqa: E402

QUANTS = ("q8_0", "f32", "q4_0")
BIN = Path(sys.executable).parent


def shipped_files() -> tuple[int, int, str]:
    files = [p for p in model_dir().rglob("*") if p.is_file()]
    gguf = model_dir() / "transformer-Q8_0.gguf"
    return (
        len(files),
        sum(p.stat().st_size for p in files),
        hashlib.sha256(gguf.read_bytes()).hexdigest()[:12],
    )


def main() -> None:
    load = machine()
    work = Path(tempfile.mkdtemp(prefix="demo-quality-"))
    env = {**os.environ, "FLUX_BATCH_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(
        [
            BIN / "flux-batch",
            "-m",
            f"quant={','.join(QUANTS)}",
            "model=demo",
            "dataset.path=prompts/demo-eval.jsonl",
            "num_images=2",
            "batch_size=8",
            "runtime.progress=false",
            "hydra.sweep.dir=sweep",
        ],
        cwd=work,
        env=env,
        check=True,
    )
    seconds = time.perf_counter() - start
    runs = {q: work / "sweep" / f"quant={q}" for q in QUANTS}
    results = {q: evaluate(runs[q], None if q == "f32" else runs["f32"]) for q in QUANTS}
    rows = [
        "| quant | colour | shape | size | position | PSNR vs F32 (mean / min) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for q in QUANTS:
        acc = results[q]["accuracy"]
        cells = [
            f"{100 * acc[a]['accuracy']:.1f}% ({acc[a]['right']}/{acc[a]['total']})"
            for a in ("colour", "shape", "size", "position")
        ]
        p = results[q].get("psnr")
        rows.append(
            f"| {q} | "
            + " | ".join(cells)
            + " | "
            + (f"{p['mean_db']:.2f} / {p['min_db']:.2f} dB" if p else "reference")
            + " |"
        )
    count, size, digest = shipped_files()
    training = json.loads((model_dir() / "training.json").read_text())
    s = training["settings"]
    body = "\n".join(
        [
            f"Model `{VERSION}` (transformer-Q8_0.gguf sha256 {digest}…): {count} shipped files, "
            f"{size / 2**20:.2f} MiB. Trained by `python -m flux_batch.demo.train` in "
            f"{training['total']['wall_s'] / 60:.1f} min wall, {training['total']['cpu_s'] / 60:.1f} CPU-min "
            f"({s['threads']} thread{'s' if s['threads'] > 1 else ''}; VAE {s['vae_steps']} steps x "
            f"{s['vae_batch']}, transformer {s['steps']} + {s['finetune_steps']} steps x {s['batch']} "
            f"from a pool of {s.get('pool', 0)} pictures, decoder {s['decoder_steps']} steps x {s['vae_batch']}).",
            "",
            f"36 prompts x 2 seeds per quant; the three renders took {seconds:.0f} s in all.",
            "",
            *rows,
        ]
    )
    write_section(
        "demo_quality", "Demo model quality", body, ("torch", "diffusers", "transformers", "gguf"), load
    )


if __name__ == "__main__":
    main()

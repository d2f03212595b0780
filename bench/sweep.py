"""Sweep benchmark on the tiny model: a 2x2 multirun in one process (one model load, prompts
encoded once) against the same four runs as four separate commands, then the rerun of the
sweep (nothing to do) and the resume of a sweep killed in its third job.

    python bench/sweep.py [--prompts 4]

Prints a Markdown table for bench/RESULTS.md. Ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AXES = ("sampler.guidance=2.5,3.5", "sampler.steps=2,4")
JOBS = [
    ("sampler.guidance=2.5", "sampler.steps=2"),
    ("sampler.guidance=2.5", "sampler.steps=4"),
    ("sampler.guidance=3.5", "sampler.steps=2"),
    ("sampler.guidance=3.5", "sampler.steps=4"),
]


def flux_batch(cwd: Path, *args: str, env: dict | None = None) -> float:
    exe = Path(sys.executable).parent / "flux-batch"
    started = time.perf_counter()
    subprocess.run(
        [str(exe), *args, "runtime.progress=false"],
        cwd=cwd,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flux-batch-bench-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(work / "cache"))
    try:
        prompts = work / "p.jsonl"
        prompts.write_text(
            "".join(
                json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}"}) + "\n"
                for i in range(args.prompts)
            )
        )
        common = (f"dataset.path={prompts}", "model=tiny")
        flux_batch(work, *common, "limit=1", "output.dir=warmup")  # builds the tiny model
        separate = sum(
            flux_batch(work, *common, *job, f"output.dir=separate/{i}") for i, job in enumerate(JOBS)
        )
        sweep = ("-m", *AXES, *common, "hydra.sweep.dir=sweep")
        fresh = flux_batch(work, *sweep)
        loads = sum(j["model_loads"] for j in json.loads((work / "sweep" / "sweep.json").read_text())["jobs"])
        rerun = flux_batch(work, *sweep)
        killed_args = ("-m", *AXES, *common, "hydra.sweep.dir=killed")
        crash = {"FLUX_BATCH_CRASH": f"image_written:{2 * args.prompts + 1}"}
        killed = flux_batch(work, *killed_args, env=crash)
        resumed = flux_batch(work, *killed_args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    images = 4 * args.prompts
    print(f"| tiny 2x2 sweep, {args.prompts} prompts ({images} images) | seconds | ratio to the sweep |")
    print("|---|---|---|")
    print(f"| one multirun, fresh (model loaded {loads} time(s)) | {fresh:.1f} | 1.00 |")
    print(f"| the same 4 runs as 4 commands | {separate:.1f} | {separate / fresh:.2f} |")
    print(f"| the multirun again (nothing to do) | {rerun:.1f} | {rerun / fresh:.2f} |")
    print(
        f"| killed in job 3, then resumed: the kill / the resume | {killed:.1f} / {resumed:.1f} | "
        f"{killed / fresh:.2f} / {resumed / fresh:.2f} |"
    )


if __name__ == "__main__":
    main()

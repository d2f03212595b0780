"""How long `flux-batch` takes to find that a finished run of N items has nothing to do.

    python bench/resume_scan.py [--items 100000] [--repeat 3]   # the "Resume scan" section

Renders one item of an N-row JSONL file on the tiny model (so run.json and one real manifest
record exist), then completes the manifest with N records and N empty image files, which is
all a finished run's resume scan reads. Then times the same command, whole process, best of
--repeat, and the same command on a 1-item run for the fixed cost (Python, Hydra, imports).
Target: under 2 s for 100,000 items, without loading a model.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine, write_section  # noqa: E402

SCRIPT = str(Path(sys.executable).parent / "flux-batch")


def flux_batch(cwd: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"flux-batch {' '.join(args)} failed:\n{result.stderr}")
    return seconds, result.stdout.strip().splitlines()[-1]


def finished_run(cwd: Path, items: int) -> list[str]:
    """A run directory whose N items are all done; the flux-batch arguments that reach it."""
    prompts = cwd / f"p{items}.jsonl"
    with open(prompts, "w") as f:
        for i in range(items):
            f.write(json.dumps({"id": f"item-{i:07d}", "prompt": f"a photo of object number {i}"}) + "\n")
    args = [f"dataset.path={prompts}", f"output.dir=run{items}", "runtime.progress=false"]
    flux_batch(cwd, *args, "limit=1")
    run_dir = cwd / f"run{items}"
    first = json.loads((run_dir / "metadata.jsonl").read_text().splitlines()[0])
    with open(run_dir / "metadata.jsonl", "w") as manifest:
        for i in range(items):
            stem = f"item-{i:07d}"
            record = dict(first, id=stem, file_name=f"images/{stem}.png",
                          prompt=f"a photo of object number {i}")
            manifest.write(json.dumps(record) + "\n")
            (run_dir / "images" / f"{stem}.png").touch()
    return args


def best(cwd: Path, args: list[str], repeat: int) -> tuple[float, str]:
    runs = [flux_batch(cwd, *args) for _ in range(repeat)]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    start_load = machine()
    cwd = Path(tempfile.mkdtemp(prefix="flux-batch-scan-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(cwd / "cache"))
    try:
        small = best(cwd, finished_run(cwd, 1), options.repeat)
        large = best(cwd, finished_run(cwd, options.items), options.repeat)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    assert "nothing to do" in small[1] and "nothing to do" in large[1], (small, large)
    target = "met" if large[0] < 2 else "NOT met"
    body = "\n".join([
        "| finished run | seconds to find nothing to do (best of %d) |" % options.repeat,
        "|---|---|",
        f"| 1 item (fixed cost: Python, Hydra, imports) | {small[0]:.2f} |",
        f"| {options.items:,} items | {large[0]:.2f} |",
        "",
        f"Target under 2 s for {options.items:,} items: **{target}** "
        f"({large[0] - small[0]:.2f} s above the fixed cost). No model is loaded in either case.",
    ])
    write_section("resume_scan", "Resume scan of a finished run", body, ("hydra-core",), start_load)


if __name__ == "__main__":
    main()

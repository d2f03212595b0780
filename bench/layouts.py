"""The run directory's layouts and the exports, on the tiny model: speed, files and bytes.

    python bench/layouts.py [--images 2000] [--repeat 2]

Renders `--images` items (32x32, 2 steps, batch size 8) once per layout and repeat, the layouts
alternating: flat, sharded (1,000 per folder), flat with captions, webdataset (tar shards of
1,000 samples written by the run, with their Parquet index). Then exports the first flat
run with `flux-batch-export --to webdataset` and `--to parquet`. Reports images/s of each
command (whole process), files created and bytes on disk, as ratios to flat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.results import machine, write_section  # noqa: E402

BIN = Path(sys.executable).parent
LAYOUTS = {
    "flat": [],
    "sharded": ["output.layout=sharded", "output.shard_size=1000"],
    "flat + captions": ["output.captions=true"],
    "webdataset": ["output.layout=webdataset", "output.shard_size=1000"],
}


def timed(args: list, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([str(a) for a in args], check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def footprint(folder: Path) -> tuple[int, int]:
    """(files, bytes on disk: allocated blocks) under `folder`, Hydra's snapshot left out."""
    files = blocks = 0
    for path in folder.rglob("*"):
        if path.is_file() and ".hydra" not in path.parts:
            files += 1
            blocks += path.stat().st_blocks
    return files, blocks * 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    a = parser.parse_args()
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="layouts-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLUX_BATCH_CACHE": str(work / "cache")}
    prompts = work / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i:06d}", "prompt": f"a photo of object {i}"}) + "\n"
            for i in range(a.images)
        )
    )
    base = [
        BIN / "flux-batch",
        "model=tiny",
        f"dataset.path={prompts}",
        "sampler.width=32",
        "sampler.height=32",
        "sampler.steps=2",
        "batch_size=8",
        "runtime.progress=false",
    ]
    seconds: dict[str, list[float]] = {name: [] for name in LAYOUTS}
    for r in range(a.repeat):
        for name in list(LAYOUTS) if r % 2 == 0 else list(reversed(LAYOUTS)):
            out = work / f"{name.replace(' + ', '-')}-{r}"
            seconds[name].append(timed([*base, f"output.dir={out}", *LAYOUTS[name]], env))
        print(r, {k: round(v[-1], 1) for k, v in seconds.items()}, flush=True)
    rows = {
        name: (statistics.median(seconds[name]), *footprint(work / f"{name.replace(' + ', '-')}-0"))
        for name in LAYOUTS
    }
    flat_run = work / "flat-0"
    for to in ("webdataset", "parquet"):
        out = work / f"export-{to}"
        took = timed([BIN / "flux-batch-export", flat_run, "--to", to, "-o", out], env)
        rows[f"export of flat to {to}"] = (took, *footprint(out))
    flat_s, flat_files, flat_bytes = rows["flat"]
    lines = [
        "| layout | command s | images/s | vs flat | files | vs flat | MiB on disk | vs flat |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (s, files, size) in rows.items():
        lines.append(
            f"| {name} | {s:.1f} | {a.images / s:.1f} | {flat_s / s:.2f}x | {files} | "
            f"{files / flat_files:.2f}x | {size / 2**20:.1f} | {size / flat_bytes:.2f}x |"
        )
    body = "\n".join(
        [
            f"The tiny model, {a.images} images of 32x32 (2 steps, batch size 8) per layout, whole "
            f"process per command (Python, imports, model load, rendering, writing); the layouts' "
            f"seconds are medians of {a.repeat} alternating runs; files and bytes count the run "
            "directory (or export) without Hydra's snapshot, bytes as allocated on disk. The exports "
            "read the flat run and write their own folder; `vs flat` compares them with rendering the "
            "flat run.",
            "",
            *lines,
        ]
    )
    write_section("layouts", "Dataset layouts and exports", body, ("torch", "pyarrow"), start_load)


if __name__ == "__main__":
    main()

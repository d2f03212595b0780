"""Image writing off the render path: the writer's own speed, and what it costs a run.

    python bench/writer.py [--frames 24] [--images 16] [--repeat 3]

1. The writer alone: `--frames` 1024x1024 frames (smooth gradients and texture with a little
   noise, compressing like a photograph) through `ImageWriter` into a run directory, PNG, JPEG
   and WebP, serial (`runtime.writers=0`) against pooled (2 threads), images/s.
2. A run: `flux-batch` on the tiny model at 1024x1024 (1 step; random weights make its
   pictures noise, which zlib gives up on quickly: a cheap PNG), `--images` images, one torch
   thread (a GPU leaves the CPU idle; one thread on this 2-core machine stands in for that), PNG
   and JPEG, serial and pooled, whole process wall time, `--repeat` alternating rounds, medians.
3. A render loop with photo-like frames: the frames of part 1 handed to the writer by a loop
   that spends `--render-seconds` per image in torch matrix products on one thread (a fast GPU's
   image time, as long as a PNG encode: the case where writing on the render path costs most).

Target: a pooled run writing PNG takes no more than 1.05x the wall time of the same run writing
JPEG (parts 2 and 3).
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.results import machine, write_section  # noqa: E402
from flux_batch.plan.items import Item, Settings  # noqa: E402
from flux_batch.store.run_dir import RunStore  # noqa: E402
from flux_batch.store.writer import ImageOptions, ImageWriter  # noqa: E402

BIN = Path(sys.executable).parent
SIDE = 1024


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    out = []
    for i in range(n):
        base = np.stack(
            [0.5 + 0.4 * np.sin(6 * x + i), 0.5 + 0.4 * np.cos(5 * y - i), 0.5 + 0.3 * np.sin(9 * (x + y))],
            axis=-1,
        )
        texture = (0.05 * np.sin(80 * x * (1 + i % 3)) * np.cos(70 * y))[..., None]
        out.append(np.clip(base + texture + rng.normal(0, 2 / 255, base.shape), 0, 1).astype(np.float32))
    return out


def writer_alone(images: list[np.ndarray], fmt: str, workers: int, work: Path) -> float:
    """images/s through ImageWriter, from the first hand-in to the last line listed."""
    store = RunStore(work / f"alone-{fmt}-{workers}-{time.monotonic_ns()}")
    store.open()
    options = ImageOptions(format=fmt, quality=95, model="bench", quant="q8_0", model_label="bench")
    writer = ImageWriter(store, options, workers=workers, queue=8)
    settings = Settings(SIDE, SIDE, 28, 3.5, 1.0, "euler")
    started = time.perf_counter()
    for i, image in enumerate(images):
        writer.write(Item(f"f{i}", 0, f"frame {i}", i, settings, f"f{i}"), image)
    writer.drain()
    seconds = time.perf_counter() - started
    writer.close()
    store.close()
    return len(images) / seconds


def render_loop_seconds(
    images: list[np.ndarray], fmt: str, workers: int, render_s: float, work: Path
) -> float:
    """Wall time of a loop that 'renders' each frame (torch work on one thread) and writes it."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    started = time.perf_counter()
    for _ in range(20):
        a @ a
    per_product = (time.perf_counter() - started) / 20
    products = max(1, round(render_s / per_product))
    store = RunStore(work / f"loop-{fmt}-{workers}-{time.monotonic_ns()}")
    store.open()
    options = ImageOptions(format=fmt, quality=95, model="bench", quant="q8_0", model_label="bench")
    writer = ImageWriter(store, options, workers=workers, queue=8)
    settings = Settings(SIDE, SIDE, 28, 3.5, 1.0, "euler")
    started = time.perf_counter()
    for i, image in enumerate(images):
        for _ in range(products):
            a @ a
        writer.write(Item(f"f{i}", 0, f"frame {i}", i, settings, f"f{i}"), image)
    writer.drain()
    seconds = time.perf_counter() - started
    writer.close()
    store.close()
    return seconds


def run_seconds(fmt: str, workers: int, prompts: Path, out: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "flux-batch"),
            "model=tiny",
            f"dataset.path={prompts}",
            f"output.dir={out}",
            f"sampler.width={SIDE}",
            f"sampler.height={SIDE}",
            "sampler.steps=1",
            f"output.format={fmt}",
            f"runtime.writers={workers}",
            "runtime.progress=false",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--render-seconds", type=float, default=0.4)
    a = parser.parse_args()
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="writer-bench-"))
    images = frames(a.frames)
    alone = {}
    for _ in range(a.repeat):
        for fmt in ("png", "jpg", "webp"):
            for workers in (0, 2):
                alone.setdefault((fmt, workers), []).append(writer_alone(images, fmt, workers, work))
    rows = [
        "| format | serial images/s | pooled (2 threads) images/s | pooled vs serial |",
        "|---|---:|---:|---:|",
    ]
    for fmt in ("png", "jpg", "webp"):
        serial, pooled = (statistics.median(alone[(fmt, w)]) for w in (0, 2))
        rows.append(f"| {fmt} | {serial:.2f} | {pooled:.2f} | {pooled / serial:.2f}x |")

    prompts = work / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"p{i:03d}", "prompt": f"a photo of object {i}"}) + "\n"
            for i in range(a.images)
        )
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs: dict[tuple[str, int], list[float]] = {}
    for r in range(a.repeat):
        order = [(f, w) for f in ("png", "jpg") for w in (0, 2)]
        for fmt, workers in order if r % 2 == 0 else order[::-1]:
            runs.setdefault((fmt, workers), []).append(
                run_seconds(fmt, workers, prompts, work / f"run-{fmt}-{workers}-{r}", env)
            )
        print(r, {k: round(v[-1], 2) for k, v in runs.items()}, flush=True)
    median = {k: statistics.median(v) for k, v in runs.items()}
    run_rows = ["| writing | PNG run s | JPEG run s | PNG vs JPEG |", "|---|---:|---:|---:|"]
    for workers, label in ((0, "serial (runtime.writers=0)"), (2, "pooled (runtime.writers=2)")):
        png, jpg = median[("png", workers)], median[("jpg", workers)]
        run_rows.append(f"| {label} | {png:.1f} | {jpg:.1f} | {png / jpg:.3f}x |")
    ratio = median[("png", 2)] / median[("jpg", 2)]

    loops: dict[tuple[str, int], list[float]] = {}
    for r in range(a.repeat):
        order = [(f, w) for f in ("png", "jpg") for w in (0, 2)]
        for fmt, workers in order if r % 2 == 0 else order[::-1]:
            loops.setdefault((fmt, workers), []).append(
                render_loop_seconds(images, fmt, workers, a.render_seconds, work)
            )
    loop_median = {k: statistics.median(v) for k, v in loops.items()}
    loop_rows = ["| writing | PNG loop s | JPEG loop s | PNG vs JPEG |", "|---|---:|---:|---:|"]
    for workers, label in ((0, "serial (runtime.writers=0)"), (2, "pooled (runtime.writers=2)")):
        png, jpg = loop_median[("png", workers)], loop_median[("jpg", workers)]
        loop_rows.append(f"| {label} | {png:.1f} | {jpg:.1f} | {png / jpg:.3f}x |")
    loop_ratio = loop_median[("png", 2)] / loop_median[("jpg", 2)]
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = "\n".join(
        [
            f"The writer alone: {a.frames} frames of {SIDE}x{SIDE}, medians of {a.repeat} rounds.",
            "",
            *rows,
            "",
            f"A run: the tiny model at {SIDE}x{SIDE}, 1 step, {a.images} images, one torch thread, whole "
            f"process wall time, medians of {a.repeat} alternating rounds.",
            "",
            *run_rows,
            "",
            f"A render loop: the {a.frames} photo-like frames, each after {a.render_seconds} s of torch "
            f"matrix products on one thread, medians of {a.repeat} alternating rounds.",
            "",
            *loop_rows,
            "",
            f"- target (pooled PNG run at most 1.05x the pooled JPEG run): the run {ratio:.3f}x, "
            f"**{'met' if ratio <= 1.05 else 'NOT met'}**; the render loop {loop_ratio:.3f}x, "
            f"**{'met' if loop_ratio <= 1.05 else 'NOT met'}**. Load average at the end: {end_load}.",
        ]
    )
    write_section("writer", "Image writing off the render path", body, ("torch", "pillow"), start_load)


if __name__ == "__main__":
    main()

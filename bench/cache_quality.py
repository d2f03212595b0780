"""Step caching on the demo model: speed against quality, each setting against cache=none.

    python bench/cache_quality.py [--repeat 3] [--batch-size 4] [--threads 1]

Renders the demo evaluation set (flux_batch/prompts/demo-eval.jsonl: 36 prompts, 2 seeds each)
through the real CLI once per cache setting and repeat, the settings alternating within each
repeat, each command a whole process. Per setting: the median denoise seconds (the run's own
log line) and whole-process images/s as ratios to cache=none's medians; the colour, shape, size
and position accuracy and the PSNR against cache=none's images, both from
`flux-batch-eval RUN --reference NONE_RUN` on the first repeat's runs.

Target: a setting at >= 1.5x denoise speed with no attribute more than 2 points below
cache=none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
ATTRIBUTES = ("colour", "shape", "size", "position")
SETTINGS = {  # name -> overrides
    "none": ["cache=none"],
    "fbcache 0.1": ["cache=fbcache", "cache.threshold=0.1"],
    "fbcache 0.2": ["cache=fbcache", "cache.threshold=0.2"],
    "fbcache 0.3": ["cache=fbcache", "cache.threshold=0.3"],
    "fbcache 0.5": ["cache=fbcache", "cache.threshold=0.5"],
    "taylorseer 2": ["cache=taylorseer", "cache.interval=2"],
    "taylorseer 3": ["cache=taylorseer", "cache.interval=3"],
    "taylorseer 4": ["cache=taylorseer", "cache.interval=4"],
}


def render(out: Path, overrides: list[str], batch_size: int, env: dict) -> tuple[float, float, str]:
    """(process seconds, denoise seconds, log) of one whole flux-batch run."""
    started = time.perf_counter()
    result = subprocess.run(
        [
            str(BIN / "flux-batch"),
            "model=demo",
            f"dataset.path={ROOT}/flux_batch/prompts/demo-eval.jsonl",
            "num_images=2",
            f"batch_size={batch_size}",
            f"output.dir={out}",
            "runtime.progress=false",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"flux-batch {' '.join(overrides)} failed:\n{log}")
    denoise = float(re.search(r"denoise ([\d.]+) s", log)[1])
    return seconds, denoise, log


def evaluate(run: Path, reference: Path, env: dict) -> dict:
    out = run.with_suffix(".eval.json")
    subprocess.run(
        [str(BIN / "flux-batch-eval"), str(run), "--reference", str(reference), "-o", str(out)],
        check=True,
        capture_output=True,
        env=env,
    )
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    a = parser.parse_args()
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="cache-quality-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(a.threads)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in SETTINGS}
    skipped: dict[str, str] = {}
    for r in range(a.repeat):
        order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))  # alternate the order
        for name in order:
            seconds, denoise, log = render(
                work / f"r{r}" / name.replace(" ", "-"), SETTINGS[name], a.batch_size, env
            )
            times[name].append((seconds, denoise))
            if m := re.search(r"fbcache skipped the remaining blocks in (\d+)%", log):
                skipped[name] = f"{m[1]}%"
        print(r, {k: round(v[-1][1], 2) for k, v in times.items()}, flush=True)
    reference = work / "r0" / "none"
    n = 72
    base_wall = statistics.median(s for s, _ in times["none"])
    base_denoise = statistics.median(d for _, d in times["none"])
    base_eval = evaluate(reference, reference, env)["accuracy"]
    rows = [
        "| cache | denoise s | denoise speed-up | images/s (whole run) | vs none | skipped | "
        + " | ".join(ATTRIBUTES)
        + " | PSNR vs none, mean / min | target |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(ATTRIBUTES) + "---|---|",
    ]
    for name in SETTINGS:
        wall = statistics.median(s for s, _ in times[name])
        denoise = statistics.median(d for _, d in times[name])
        result = base_eval if name == "none" else None
        psnr = "reference"
        if result is None:
            scored = evaluate(work / "r0" / name.replace(" ", "-"), reference, env)
            result, p = scored["accuracy"], scored["psnr"]
            psnr = f"{p['mean_db']:.1f} / {p['min_db']:.1f} dB"
        drops = [100 * (base_eval[x]["accuracy"] - result[x]["accuracy"]) for x in ATTRIBUTES]
        speed = base_denoise / denoise
        met = "-" if name == "none" else ("met" if speed >= 1.5 and max(drops) <= 2 else "not met")
        cells = [f"{100 * result[x]['accuracy']:.1f}" for x in ATTRIBUTES]
        rows.append(
            f"| {name} | {denoise:.2f} | {speed:.2f}x | {n / wall:.2f} | {base_wall / wall:.2f}x | "
            f"{skipped.get(name, '-')} | " + " | ".join(cells) + f" | {psnr} | {met} |"
        )
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = "\n".join(
        [
            f"The demo model, 36 evaluation prompts x 2 seeds = {n} images per run, 12 steps, batch size "
            f"{a.batch_size}, torch threads {a.threads}; medians of {a.repeat} runs per setting, the "
            "settings alternating within each repeat. `denoise s` is the run's own denoise time, `images/s` "
            "the whole process's (Python, imports, model load, rendering, writing). Accuracy in percent "
            "of the 72 images, from `flux-batch-eval --reference` on the first repeat. `skipped`: the share "
            "of item-steps in which First Block Cache skipped the remaining blocks. Target: >= 1.5x denoise "
            f"speed with no attribute more than 2 points below cache=none. Load average at the end: {end_load}.",
            "",
            *rows,
        ]
    )
    write_section(
        "cache_quality",
        "Step caching on the demo model: speed against quality",
        body,
        ("torch", "diffusers"),
        start_load,
    )


if __name__ == "__main__":
    main()

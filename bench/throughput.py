"""flux-batch against the plain loop (one pipeline call per prompt), whole process against
whole process, on the same model files and prompts.

    python bench/throughput.py [--models tiny,mid] [--prompts 32] [--batch-sizes 1,2,4,8]
                               [--repeat 1] [--section NAME]   # default: the "Throughput" section

For each model the commands run one after another, interleaved per repeat (plain loop, then
flux-batch at each batch size), and the best of --repeat counts; images/s are ratios within
one run. `tiny` is the embedded model (64x64, 4 steps), `mid` the mid-size random model of
bench/mid_model.py (hidden 512, 128x128, 4 steps). Every prompt row carries its seed, so both
render the same items; at batch size 1 the images must be identical, bit for bit (checked).

The driver's own work is what flux-batch does beyond the models: reading and planning the
prompt file (timed in this process), and writing, hashing, PNG encoding and the manifest (the
run's log line "the rest of rendering"). Its share is of the whole process's wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import mid_model  # noqa: E402
from bench.results import machine, write_section  # noqa: E402

BIN = Path(sys.executable).parent
SIZES = {"tiny": (64, 4), "mid": (128, 4)}  # image side, steps


def write_prompts(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"p{i:05d}", "prompt": f"a photo of object number {i}",
                                "seed": 1000 + i}) + "\n")


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def model_files(name: str, work: Path) -> tuple[str, str]:
    from flux_batch.demo import tiny

    if name == "tiny":
        base, gguf = tiny.ensure_built("Q8_0")
        return str(base), str(gguf)
    folder = mid_model.build(work / "mid")
    return str(folder), str(folder / "transformer-Q8_0.gguf")


def plan_seconds(prompts: Path) -> float:
    """Reading and planning the prompt file, as the driver does before rendering."""
    from hydra import compose, initialize_config_module

    from flux_batch.cli import register_configs
    from flux_batch.driver import plan_items

    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset.path={prompts}"])
        started = time.perf_counter()
        plan_items(cfg)
        return time.perf_counter() - started


def bench_model(name: str, work: Path, n: int, batch_sizes: list[int], repeat: int) -> list[str]:
    base, gguf = model_files(name, work)
    side, steps = SIZES[name]
    prompts = work / f"{name}.jsonl"
    write_prompts(prompts, n)
    plain = [sys.executable, str(ROOT / "bench" / "plain_loop.py"), base, gguf, str(prompts), "",
             "--width", str(side), "--height", str(side), "--steps", str(steps),
             "--max-sequence-length", "32"]
    best: dict = {}
    for r in range(repeat):
        out = work / f"{name}-plain-{r}"
        seconds, log = timed(plain[:5] + [str(out)] + plain[6:], work)
        loop = float(re.search(r"loop seconds: ([\d.]+)", log)[1])
        best["plain"] = min(best.get("plain", (1e9,)), (seconds, loop, out))
        for b in batch_sizes:
            out = work / f"{name}-fb{b}-{r}"
            seconds, log = timed([str(BIN / "flux-batch"), f"dataset.path={prompts}", f"output.dir={out}",
                                  "model=tiny", f"model.base={base}", f"model.transformer={gguf}",
                                  f"sampler.width={side}", f"sampler.height={side}",
                                  f"sampler.steps={steps}", f"batch_size={b}", "runtime.progress=false",
                                  "runtime.device=cpu"], work)
            per_image = float(re.search(r"\(([\d.]+) s/image", log)[1])
            rest = float(re.search(r"the rest of rendering \(writing, manifest\) ([\d.-]+) s", log)[1])
            schedule = re.search(r"INFO\] (\w+) schedule", log)[1]
            best[b] = min(best.get(b, (1e9,)), (seconds, per_image * n, out, rest, schedule))
        print(name, r, {k: round(v[0], 2) for k, v in best.items()}, flush=True)
    planning = plan_seconds(prompts)
    same = identical(best["plain"][2], best[1][2] if 1 in best else None)
    p_seconds, p_loop, _ = best["plain"]
    rows = [f"| {name} | plain loop | {p_seconds:.1f} | {n / p_seconds:.2f} | 1.00 | {p_loop:.1f} | {n / p_loop:.2f} | 1.00 | - | - |"]
    for b in batch_sizes:
        seconds, loop, _, rest, schedule = best[b]
        own = planning + rest
        rows.append(
            f"| {name} | flux-batch, batch {b} ({schedule}) | {seconds:.1f} | {n / seconds:.2f} | "
            f"{p_seconds / seconds:.2f} | {loop:.1f} | {n / loop:.2f} | {p_loop / loop:.2f} | "
            f"{own:.2f} | {100 * own / seconds:.1f}% |")
    return rows, same, verdicts(name, best, n)


def verdicts(name: str, best: dict, n: int) -> list[str]:
    """The targets: mid-size at least the plain loop with the driver's own work under 3% of the
    wall time; tiny at least 1.5x the plain loop at batch 8, whole process against whole process."""
    plain = best["plain"][0]
    sizes = [b for b in best if b != "plain"]
    if name == "mid":
        fastest = min(sizes, key=lambda b: best[b][0])
        ratio = plain / best[fastest][0]
        share = max(100 * best[b][3] / best[b][0] for b in sizes)
        met = "met" if ratio >= 1 and share < 3 else "NOT met"
        return [f"- mid target (images/s at least the plain loop's, driver's own work under 3%): "
                f"best {ratio:.2f}x at batch {fastest}, own work at most {share:.1f}%: **{met}**."]
    if name == "tiny" and 8 in best:
        ratio = plain / best[8][0]
        return [f"- tiny target (at least 1.5x the plain loop at batch 8, whole process): {ratio:.2f}x: "
                f"**{'met' if ratio >= 1.5 else 'NOT met'}**."]
    return []


def identical(plain_dir: Path, fb_dir: Path | None) -> str:
    if fb_dir is None:
        return "not compared (batch size 1 not run)"
    records = [json.loads(line) for line in (fb_dir / "metadata.jsonl").read_text().splitlines()]
    diffs = [np.abs(np.asarray(Image.open(plain_dir / f"{r['id']}.png"), dtype=int)
                    - np.asarray(Image.open(fb_dir / r["file_name"]).convert("RGB"), dtype=int)).max()
             for r in records]
    return "identical, bit for bit" if max(diffs) == 0 else f"differ by up to {max(diffs)}/255"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for every command (default: torch's own choice)")
    parser.add_argument("--section", default="throughput",
                        help="the bench/RESULTS.md section to write (another name keeps the default one)")
    a = parser.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="flux-batch-throughput-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(work / "cache"))
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    header = ["| model | renderer | process s | images/s | vs plain | loop s | loop images/s | loop vs plain | driver's own work s | of process wall |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows, notes = [], []
    for name in a.models.split(","):
        model_rows, same, met = bench_model(name, work, a.prompts, batch_sizes, a.repeat)
        rows += model_rows
        notes += [f"- {name}: batch size 1 against the plain loop: {same}.", *met]
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = "\n".join([
        f"{a.prompts} prompts per model, each command a whole process (Python, imports, model load, "
        f"rendering, writing), best of {a.repeat}, torch threads: "
        f"{a.threads or 'torch default (one per core)'}. `loop` is the rendering loop alone (the plain "
        "loop's own timer; flux-batch's s/image times images). Load average at the end: "
        f"{end_load}.", "", *header, *rows, "", *notes])
    title = "Throughput: flux-batch vs the plain loop"
    if a.section != "throughput":
        title += f" ({a.models}, {a.prompts} prompts)"
    write_section(a.section, title, body,
                  ("torch", "diffusers"), start_load)


if __name__ == "__main__":
    main()

"""flux-batch against the plain loop (one pipeline call per prompt), whole process against
whole process, on the same model files and prompts.

    python bench/throughput.py [--models demo,mid,mid-flux2] [--prompts 36] [--batch-sizes 1,4]
                               [--repeat 3] [--threads 1] [--inputs] [--section NAME]

For each model the commands run one after another, alternating per repeat (plain loop, then
flux-batch at each batch size; the next repeat in the reverse order); each ratio is the median
over the repeats of the plain loop's wall time over flux-batch's in the same repeat. `demo` is
the trained demo model (64x64, 12 steps), `tiny` the embedded random model (64x64, 4 steps),
`mid` the mid-size random model of bench/mid_model.py (hidden 512, 128x128, 4 steps), and
`mid-kontext`, `mid-flux2`, `mid-klein`, `mid-chroma` the same for the other families. Every
prompt row carries its seed, so both render the same items; at batch size 1 the images are
compared pixel by pixel.

`--inputs` gives every row its own input image (image-conditioned families: mid-kontext,
mid-flux2, mid-klein), drawn at the output size, which the plain loop hands to the pipeline at
each call; it also measures what encoding each input once saves (see `encode_savings`).

Targets: batch size 1 at least the plain loop on the demo and mid-size models; the tiny model
at batch size 8 over 200 prompts at least 1.5x (`--models tiny --prompts 200 --batch-sizes 1,8`);
for every family's mid-size model, batch size 1 at least 1.0x and the best batch size at least
1.3x.

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
from statistics import median

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import mid_model  # noqa: E402
from bench.results import machine, write_section  # noqa: E402

BIN = Path(sys.executable).parent
SIZES = {
    "tiny": (64, 4, 3.5, 32),
    "mid": (128, 4, 3.5, 32),  # side, steps, guidance, text tokens
    "demo": (64, 12, 2.5, 12),
    "mid-kontext": (128, 4, 2.5, 32),
    "mid-flux2": (128, 4, 4.0, 64),  # embedded guidance
    "mid-klein": (128, 4, 1.0, 64),  # distilled: no guidance
    "mid-chroma": (128, 4, 4.0, 32),  # classifier-free guidance: two passes per step
}
# mid-size models: their tiny preset, family and variant
MIDS = {
    "mid": ("tiny", "flux1", "dev"),
    "mid-kontext": ("tiny-kontext", "kontext", "dev"),
    "mid-flux2": ("tiny-flux2", "flux2", "dev"),
    "mid-klein": ("tiny-klein", "flux2-klein", "distilled"),
    "mid-chroma": ("tiny-chroma", "chroma", "chroma"),
}


def write_prompts(path: Path, n: int, side: int = 0) -> None:
    """`n` rows with their seeds; with `side`, each with its own input picture of side x side."""
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"p{i:05d}", "prompt": f"a photo of object number {i}", "seed": 1000 + i}
            if side:
                row["image"] = draw_input(path.parent / "inputs" / f"in{i:05d}.png", i, side)
            f.write(json.dumps(row) + "\n")


def draw_input(path: Path, i: int, side: int) -> str:
    """A disc of its own colour and place on grey: inputs that differ from each other."""
    from PIL import ImageDraw

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (side, side), (200, 200, 200))
    colour = ((i * 67) % 256, (i * 131) % 256, (i * 29 + 90) % 256)
    x = (i * 13) % (side // 2)
    ImageDraw.Draw(image).ellipse((x, side // 4, x + side // 2, side // 4 * 3), fill=colour)
    image.save(path)
    return f"inputs/{path.name}"


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def model_files(name: str, work: Path) -> tuple[str, str]:
    from flux_batch import demo
    from flux_batch.demo import tiny

    if name == "demo":
        return str(demo.model_dir()), str(demo.transformer_path("Q8_0"))
    if name == "tiny":
        base, gguf = tiny.ensure_built("Q8_0")
        return str(base), str(gguf)
    _, family, variant = MIDS[name]
    folder = mid_model.build(work / name, family, variant)
    return str(folder), str(folder / "transformer-Q8_0.gguf")


def plan_seconds(prompts: Path, model: list[str]) -> float:
    """Reading and planning the prompt file (and checking its inputs), as the driver does before
    rendering, with the model's overrides (`model`)."""
    from hydra import compose, initialize_config_module

    from flux_batch.cli import register_configs
    from flux_batch.driver import plan_items

    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"dataset.path={prompts}", *model])
        started = time.perf_counter()
        plan_items(cfg)
        return time.perf_counter() - started


def bench_model(
    name: str, work: Path, n: int, batch_sizes: list[int], repeat: int, with_inputs: bool = False
):
    base, gguf = model_files(name, work)
    side, steps, guidance, tokens = SIZES[name]
    prompts = work / f"{name}.jsonl"
    write_prompts(prompts, n, side if with_inputs else 0)
    plain = [
        sys.executable,
        str(ROOT / "bench" / "plain_loop.py"),
        base,
        gguf,
        str(prompts),
        "",
        "--width",
        str(side),
        "--height",
        str(side),
        "--steps",
        str(steps),
        "--guidance",
        str(guidance),
        "--max-sequence-length",
        str(tokens),
        "--family",
        MIDS[name][1] if name in MIDS else "flux1",
    ]
    preset = MIDS[name][0] if name in MIDS else "tiny"
    model = (
        ["model=demo"]
        if name == "demo"
        else [f"model={preset}", f"model.base={base}", f"model.transformer={gguf}"]
    )
    runs: dict = {}  # "plain" or batch size -> [(process s, loop s, out dir, own work s, schedule)]
    for r in range(repeat):
        order = ["plain", *batch_sizes]
        for who in order if r % 2 == 0 else order[::-1]:
            if who == "plain":
                out = work / f"{name}-plain-{r}"
                seconds, log = timed(plain[:5] + [str(out)] + plain[6:], work)
                runs.setdefault("plain", []).append(
                    (seconds, float(re.search(r"loop seconds: ([\d.]+)", log)[1]), out, 0.0, "")
                )
                continue
            out = work / f"{name}-fb{who}-{r}"
            seconds, log = timed(
                [
                    str(BIN / "flux-batch"),
                    f"dataset.path={prompts}",
                    f"output.dir={out}",
                    *model,
                    f"sampler.width={side}",
                    f"sampler.height={side}",
                    f"sampler.steps={steps}",
                    f"sampler.guidance={guidance}",
                    f"sampler.max_sequence_length={tokens}",
                    f"batch_size={who}",
                    "runtime.progress=false",
                    "runtime.device=cpu",
                ],
                work,
            )
            per_image = float(re.search(r"\(([\d.]+) s/image", log)[1])
            rest = float(re.search(r"the rest of rendering \(writing, manifest\) ([\d.-]+) s", log)[1])
            schedule = re.search(r"INFO\] (\w+) schedule", log)[1]
            runs.setdefault(who, []).append((seconds, per_image * n, out, rest, schedule))
        print(name, r, {k: round(v[-1][0], 2) for k, v in runs.items()}, flush=True)
    planning = plan_seconds(prompts, model)
    same = identical(runs["plain"][0][2], runs[1][0][2] if 1 in runs else None)
    p_seconds = median(x[0] for x in runs["plain"])
    p_loop = median(x[1] for x in runs["plain"])
    rows = [
        f"| {name} | plain loop | {p_seconds:.1f} | {n / p_seconds:.2f} | 1.00 | {p_loop:.1f} | 1.00 | - | - |"
    ]
    ratios = {}
    for b in batch_sizes:
        seconds, loop = median(x[0] for x in runs[b]), median(x[1] for x in runs[b])
        ratios[b] = median(p[0] / f[0] for p, f in zip(runs["plain"], runs[b]))
        loop_ratio = median(p[1] / f[1] for p, f in zip(runs["plain"], runs[b]))
        own = planning + median(x[3] for x in runs[b])
        rows.append(
            f"| {name} | flux-batch, batch {b} ({runs[b][0][4]}) | {seconds:.1f} | {n / seconds:.2f} | "
            f"{ratios[b]:.2f} | {loop:.1f} | {loop_ratio:.2f} | {own:.2f} | {100 * own / seconds:.1f}% |"
        )
    return rows, same, verdicts(name, ratios, n)


def encode_savings(name: str, work: Path, n: int, k: int = 4) -> str:
    """What encoding each input once saves: a run of `k` images per row encodes each of its `n`
    inputs once where the plain loop encodes one per image (n * k), and a second run over the
    same `runtime.embed_cache` encodes none (read back from disk)."""
    base, gguf = model_files(name, work)
    side, steps, guidance, tokens = SIZES[name]
    prompts = work / f"{name}.jsonl"
    common = [
        str(BIN / "flux-batch"),
        f"dataset.path={prompts}",
        f"model={MIDS[name][0]}",
        f"model.base={base}",
        f"model.transformer={gguf}",
        f"sampler.width={side}",
        f"sampler.height={side}",
        f"sampler.steps={steps}",
        f"sampler.guidance={guidance}",
        f"sampler.max_sequence_length={tokens}",
        f"num_images={k}",
        "batch_size=4",
        "runtime.progress=false",
        "runtime.device=cpu",
        f"runtime.embed_cache={work / (name + '-embed-cache')}",
    ]
    logs = [timed([*common, f"output.dir={work / f'{name}-cache-{run}'}"], work)[1] for run in (1, 2)]
    found = [
        re.search(r"input images of (\d+) items: (\d+) VAE-encoded \(([\d.]+) s\), (\d+) read", log)
        for log in logs
    ]
    items, encoded, seconds = int(found[0][1]), int(found[0][2]), float(found[0][3])
    each = seconds / max(encoded, 1)
    return (
        f"- {name}, {n} rows x {k} images ({items} items): each input VAE-encoded once, {encoded} "
        f"encodes in {seconds:.2f} s ({1000 * each:.0f} ms each) where one pipeline call per image "
        f"encodes {items} (about {items * each:.2f} s: {items - encoded} encodes, "
        f"{(items - encoded) * each:.2f} s saved); the second run over the same "
        f"`runtime.embed_cache`: {found[1][2]} encoded, {found[1][4]} read from disk "
        f"({float(found[1][3]):.2f} s)."
    )


def verdicts(name: str, ratios: dict, n: int) -> list[str]:
    """Batch size 1 at least the plain loop (demo, mid-size models); tiny at batch 8 at least
    1.5x; another family's mid-size model at its best batch size at least 1.3x."""
    found = []
    if name in ("demo", *MIDS) and 1 in ratios:
        found.append(
            f"- {name} target (batch size 1 at least the plain loop, whole process): "
            f"{ratios[1]:.2f}x: **{'met' if ratios[1] >= 1 else 'NOT met'}**."
        )
    if name in MIDS and name != "mid" and len(ratios) > 1:
        size, best = max(ratios.items(), key=lambda kv: kv[1])
        found.append(
            f"- {name} target (the best batch size at least 1.3x the plain loop, whole process): "
            f"batch {size}, {best:.2f}x: **{'met' if best >= 1.3 else 'NOT met'}**."
        )
    if name == "tiny" and 8 in ratios:
        found.append(
            f"- tiny target (batch size 8 at least 1.5x the plain loop over 200 prompts, whole "
            f"process; {n} prompts here): {ratios[8]:.2f}x: **{'met' if ratios[8] >= 1.5 else 'NOT met'}**."
        )
    return found


def identical(plain_dir: Path, fb_dir: Path | None) -> str:
    if fb_dir is None:
        return "not compared (batch size 1 not run)"
    records = [json.loads(line) for line in (fb_dir / "metadata.jsonl").read_text().splitlines()]
    diffs = [
        np.abs(
            np.asarray(Image.open(plain_dir / f"{r['id']}.png"), dtype=int)
            - np.asarray(Image.open(fb_dir / r["file_name"]).convert("RGB"), dtype=int)
        ).max()
        for r in records
    ]
    return "identical, bit for bit" if max(diffs) == 0 else f"differ by up to {max(diffs)}/255"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,mid")
    parser.add_argument("--prompts", type=int, default=36)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS for every command (0: torch's own choice)"
    )
    parser.add_argument("--inputs", action="store_true", help="every row with its own input image")
    parser.add_argument(
        "--section",
        default="throughput",
        help="the bench/RESULTS.md section to write (another name keeps the default one)",
    )
    a = parser.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    start_load = machine()
    work = Path(tempfile.mkdtemp(prefix="flux-batch-throughput-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(work / "cache"))
    batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    header = [
        "| model | renderer | process s | images/s | vs plain | loop s | loop vs plain | driver's own work s | of process wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows, notes = [], []
    for name in a.models.split(","):
        model_rows, same, met = bench_model(name, work, a.prompts, batch_sizes, a.repeat, a.inputs)
        rows += model_rows
        notes += [f"- {name}: batch size 1 against the plain loop: {same}.", *met]
        if a.inputs:
            notes.append(encode_savings(name, work, a.prompts))
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = "\n".join(
        [
            ("Each row with its own input image. " if a.inputs else "")
            + f"{a.prompts} prompts per model, each command a whole process (Python, imports, model load, "
            f"rendering, writing); seconds are medians of {a.repeat} alternating repeats, `vs plain` the "
            "median of the per-repeat ratios; torch threads: "
            f"{a.threads or 'torch default (one per core)'}. `loop` is the rendering loop alone (the plain "
            "loop's own timer; flux-batch's s/image times images). Load average at the end: "
            f"{end_load}.",
            "",
            *header,
            *rows,
            "",
            *notes,
        ]
    )
    title = "Throughput: flux-batch vs the plain loop"
    if a.section != "throughput":
        title += f" ({a.models}, {a.prompts} {'rows with input images' if a.inputs else 'prompts'})"
    write_section(a.section, title, body, ("torch", "diffusers"), start_load)


if __name__ == "__main__":
    main()

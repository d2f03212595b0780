"""Data-parallel scaling on this machine: the same items rendered by one process and by
`accelerate launch --multi_gpu --num_processes 2` (torchrun, gloo; 2 ranks on the CPU cores).

    python bench/scale_out.py [--items 24] [--size 256] [--steps 8] [--repeat 2]   # "Scale-out"

Each configuration renders the items of a fresh run directory on the tiny model; the table gives
the whole command (Python, imports, model load, rendering, merge) and the render phase alone
(the summary's s/image: for ranks, the slowest rank's render time over all images). torchrun
gives each rank one CPU thread (OMP_NUM_THREADS=1), so one process is measured both with
torch's default threads (one per core) and with one thread. Runs alternate so that load from
other work falls on all alike; the best of --repeat counts. Checks that the pixels agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine, write_section  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int) -> list[str]:
    if processes == 1:
        return [str(BIN / "flux-batch")]
    return [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(BIN / "flux-batch"),
    ]


# label -> (processes, environment)
CONFIGS = {
    "1 process, default threads": (1, {}),
    "1 process, 1 thread": (1, {"OMP_NUM_THREADS": "1"}),
    "2 ranks, 1 thread each": (2, {}),
}


def render(cwd: Path, label: str, args: list[str], run_dir: str) -> tuple[float, float, str]:
    """(whole seconds, render seconds per image, summary line) of one fresh run."""
    processes, env = CONFIGS[label]
    shutil.rmtree(cwd / run_dir, ignore_errors=True)
    started = time.perf_counter()
    result = subprocess.run(
        [*command(processes), *args, f"output.dir={run_dir}"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{result.stderr[-3000:]}")
    line = result.stdout.strip().splitlines()[-1]
    per_image = float(re.search(r"\(([\d.]+) s/image", line).group(1))
    return seconds, per_image, line


def digests(run_dir: Path) -> dict[str, str]:
    records = [json.loads(line) for line in (run_dir / "metadata.jsonl").read_text().splitlines()]
    return {r["id"]: hashlib.sha256((run_dir / r["file_name"]).read_bytes()).hexdigest() for r in records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    options = parser.parse_args()
    start_load = machine()
    cwd = Path(tempfile.mkdtemp(prefix="flux-batch-scale-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(cwd / "cache"))
    prompts = cwd / "p.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"id": f"item-{i:03d}", "prompt": f"a photo of object {i}"}) + "\n"
            for i in range(options.items)
        )
    )
    args = [
        f"dataset.path={prompts}",
        "model=tiny",
        f"sampler.width={options.size}",
        f"sampler.height={options.size}",
        f"sampler.steps={options.steps}",
        "runtime.progress=false",
    ]
    try:
        subprocess.run(
            [str(BIN / "flux-batch"), *args, "limit=1", "output.dir=warm"],
            cwd=cwd,
            check=True,
            capture_output=True,
        )  # builds the tiny model once
        runs: dict[str, list[tuple[float, float, str]]] = {label: [] for label in CONFIGS}
        loads = []
        for _ in range(options.repeat):
            for n, label in enumerate(CONFIGS):
                runs[label].append(render(cwd, label, args, f"run{n}"))
                loads.append(os.getloadavg()[0])
        same = len({json.dumps(digests(cwd / f"run{n}"), sort_keys=True) for n in range(len(CONFIGS))}) == 1
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    whole = {p: min(r[0] for r in runs[p]) for p in runs}
    per_image = {p: min(r[1] for r in runs[p]) for p in runs}
    base = "1 process, 1 thread"
    body = "\n".join(
        [
            f"{options.items} items, tiny model, {options.size}x{options.size}, {options.steps} steps, "
            f"best of {options.repeat} (1-minute load average after each run: "
            f"{', '.join(f'{x:.1f}' for x in loads)}).",
            "",
            f"| run | whole command, s | render phase, s/image | images/s (render) | render speed vs {base} | whole command vs {base} |",
            "|---|---|---|---|---|---|",
            *(
                f"| {p} | {whole[p]:.1f} | {per_image[p]:.3f} | {1 / per_image[p]:.2f} | "
                f"{per_image[base] / per_image[p]:.2f}x | {whole[base] / whole[p]:.2f}x |"
                for p in CONFIGS
            ),
            "",
            f"Pixels of all runs identical: **{'yes' if same else 'NO'}**.",
        ]
    )
    write_section("scale_out", "Scale-out: 1 process vs 2 ranks", body, ("torch", "accelerate"), start_load)


if __name__ == "__main__":
    main()

"""engine=ray against engine=local on the demo model, and the driver's commit rate.

    unshare -n sh -c 'ip link set lo up && exec python bench/ray_engine.py [--items 200] [--rounds 2]'

Run it inside a loopback-only network namespace (Ray binds the machine's address otherwise).
Each round runs, one after the other, the whole `flux-batch` command on `--items` demo items:
`engine=local`; `engine=ray` with a Ray started inside the process (2 actors of 1 CPU); the
same on a two-node cluster on loopback (`ray.cluster_utils.Cluster`, 2 logical CPUs per node),
joined by `engine.address`. Each is timed again on 2 items, which gives the fixed cost of the
command (Python, imports, Ray's start, the actors' model loads). Medians over the rounds.

The commit rate: the driver's side alone (scale/ray_engine._commit: a result's JSON parsed,
the duplicate check, the manifest line appended and fsynced), fed results that return at once.
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

SCRIPT = str(Path(sys.executable).parent / "flux-batch")


def command(out: Path, items: int, *extra: str) -> float:
    """Seconds of one whole `flux-batch` run of `items` demo items (34 images per example prompt)."""
    args = ["model=demo", "num_images=34", f"limit={items}", "runtime.progress=false", f"output.dir={out}"]
    started = time.perf_counter()
    result = subprocess.run([SCRIPT, *args, *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or f"rendered {items}," not in result.stdout:
        raise SystemExit(f"flux-batch {' '.join(extra)} failed:\n{result.stdout}\n{result.stderr[-3000:]}")
    return seconds


def commit_rate(count: int = 20_000) -> float:
    """Records per second through the driver's commit of results that arrive at once."""
    from flux_batch.scale import ray_engine
    from flux_batch.store.run_dir import RunStore

    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(folder)
        store.open()
        record = {"file_name": "", "id": "", "k": 0, "prompt": "a photo of a red circle", "seed": 1}
        results = [
            json.dumps(
                {"record": {**record, "id": f"x{i}", "file_name": f"images/x{i}.png"}, "node": "n", "pid": 1}
            )
            for i in range(count)
        ]
        started = time.perf_counter()
        for text in results:
            ray_engine._commit(json.loads(text), store, None, None, lambda item: None)
        seconds = time.perf_counter() - started
        store.close()
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    start_load = machine()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    modes = {
        "engine=local": (),
        "engine=ray, a Ray inside the process, 2 workers": ("engine=ray", "engine.workers=2"),
        "engine=ray, 2-node cluster on loopback, 2 workers": (
            "engine=ray",
            f"engine.address={cluster.address}",
            "engine.workers=2",
        ),
    }
    timings: dict[str, dict[int, list[float]]] = {name: {options.items: [], 2: []} for name in modes}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for round_ in range(options.rounds):
                for items in (options.items, 2):
                    for name, extra in modes.items():  # alternating, each run into a fresh folder
                        out = Path(folder) / f"{round_}-{items}-{len(timings[name][items])}-{hash(name)}"
                        timings[name][items].append(command(out, items, *extra))
                        print(name, items, f"{timings[name][items][-1]:.1f} s", flush=True)
    finally:
        cluster.shutdown()
    rate = statistics.median(commit_rate() for _ in range(3))
    n = options.items
    rows = [
        f"| engine | {n} items (s) | images/s | 2 items (s): the fixed cost |",
        "|---|---|---|---|",
    ]
    for name, runs in timings.items():
        whole, fixed = statistics.median(runs[n]), statistics.median(runs[2])
        rows.append(f"| {name} | {whole:.1f} | {n / whole:.2f} | {fixed:.1f} |")
    body = "\n".join(
        [
            *rows,
            "",
            f"Medians of {options.rounds} rounds, the modes alternating; each the whole `flux-batch` "
            "command on the demo model (64x64, 4 steps, batch size 1). The driver commits "
            f"{rate:,.0f} records/s (results arriving at once; median of 3 runs of 20,000).",
        ]
    )
    write_section(
        "ray_engine", f"engine=ray against engine=local, {n} demo items", body, ("ray",), start_load
    )


if __name__ == "__main__":
    main()

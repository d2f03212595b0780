"""Planning a Parquet prompt file of a million rows or ten, and finding a finished run of it finished.

    python bench/parquet_plan.py [--rows 1000000]

Writes a Parquet file of `--rows` rows (id, prompt, category), and up to a million rows the
same rows as JSONL, then:
- plan: time and peak RSS of reading and checking every row, counting the pending items and
  making every Item, in a fresh process each (`driver.plan_run`, then `pending()`, as a run's
  start does), Parquet and JSONL side by side;
- resume: renders one item of the Parquet file on the tiny model (so run.json and one real
  manifest record exist), completes the manifest with every row's record and an empty image
  file each (all a finished run's resume scan reads), then times the whole `flux-batch` command
  that finds it finished: first without `.plan.index` (it reads the Parquet file again, and
  keeps the index), then three times with it (the file's identity is checked, its rows are not
  read), reporting the median.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.results import machine, write_section  # noqa: E402

SCRIPT = str(Path(sys.executable).parent / "flux-batch")
CATEGORIES = ("animal", "vehicle", "building", "food", "plant")
JSONL_ROWS = 1_000_000


def write_sources(folder: Path, rows: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"item-{i:07d}" for i in range(rows)]
    prompts = [f"a photo of object number {i}" for i in range(rows)]
    categories = [CATEGORIES[i % len(CATEGORIES)] for i in range(rows)]
    table = pa.table({"id": ids, "prompt": prompts, "category": categories})
    pq.write_table(table, folder / "prompts.parquet", row_group_size=100_000)
    pq.write_table(table.slice(0, 1), folder / "one.parquet")
    (folder / "one.jsonl").write_text(json.dumps(table.slice(0, 1).to_pylist()[0]) + "\n")
    if rows > JSONL_ROWS:  # a text file is read whole: compared up to a million rows
        return folder / "prompts.parquet", None
    with open(folder / "prompts.jsonl", "w") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row) + "\n")
    return folder / "prompts.parquet", folder / "prompts.jsonl"


def plan_in_child(source: Path) -> dict:
    """Seconds and peak RSS of one plan, in a process of its own."""
    child = subprocess.run(
        [sys.executable, __file__, "--plan-only", str(source)], capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.strip().splitlines()[-1])


def plan_only(source: str) -> None:
    """The child: compose the config as the CLI does, plan a one-row file of the same format
    (the imports, paid once per process, are not what is measured), then time the plan."""
    from hydra import compose, initialize_config_module

    from flux_batch.cli import register_configs
    from flux_batch.config import load
    from flux_batch.driver import plan_run

    register_configs()
    one = Path(source).with_name("one" + Path(source).suffix)
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        configs = [
            load(compose(config_name="config", overrides=["model=tiny", f"dataset.path={path}"]))
            for path in (one, source)
        ]
    list(plan_run(configs[0]).items())
    cfg = configs[1]
    before = peak_rss_mib()
    started = time.perf_counter()
    plan = plan_run(cfg)  # every row read and checked
    checked = time.perf_counter()
    pending = plan.pending()  # counted, as a fresh run's start does
    counted = time.perf_counter()
    items = sum(1 for _ in pending)  # every Item made, as rendering reads them
    made = time.perf_counter()
    print(
        json.dumps(
            {
                "seconds": made - started,
                "check": checked - started,
                "count": counted - checked,
                "make": made - counted,
                "items": items,
                "before": before,
                "peak": peak_rss_mib(),
            }
        )
    )


def peak_rss_mib() -> float:
    # VmHWM: this process's own peak (ru_maxrss would carry a parent's across exec)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def flux_batch(cwd: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"flux-batch {' '.join(args)} failed:\n{result.stderr}")
    return seconds, result.stdout.strip().splitlines()[-1]


def finished_run(cwd: Path, source: Path, rows: int) -> list[str]:
    """A run directory whose items are all done; the flux-batch arguments that reach it."""
    from flux_batch.demo import tiny

    tiny.ensure_built("Q8_0")
    args = [f"dataset.path={source}", "output.dir=run", "model=tiny", "runtime.progress=false"]
    args += ["sampler.width=32", "sampler.height=32", "sampler.steps=2"]
    flux_batch(cwd, *args, "limit=1")
    run_dir = cwd / "run"
    first = json.loads((run_dir / "metadata.jsonl").read_text().splitlines()[0])
    images = run_dir / "images"
    with open(run_dir / "metadata.jsonl", "w") as manifest:
        for i in range(rows):
            stem = f"item-{i:07d}"
            category = CATEGORIES[i % len(CATEGORIES)]
            record = dict(first, id=stem, file_name=f"images/{stem}.png", category=category)
            record["prompt"] = f"a photo of object number {i}"
            manifest.write(json.dumps(record) + "\n")
            os.close(os.open(images / f"{stem}.png", os.O_CREAT | os.O_WRONLY, 0o644))
    (run_dir / ".plan.index").unlink(missing_ok=True)
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--plan-only", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.plan_only:
        return plan_only(options.plan_only)
    start_load = machine()
    cwd = Path(tempfile.mkdtemp(prefix="flux-batch-parquet-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(cwd / "cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        sources = [path for path in write_sources(cwd, options.rows) if path is not None]
        parquet = sources[0]
        sizes = {path: path.stat().st_size / 2**20 for path in sources}
        plans = {path: plan_in_child(path) for path in sources}
        print(f"plans: {plans}", flush=True)  # a 10M-row run takes an hour: figures as they come
        args = finished_run(cwd, parquet, options.rows)
        no_index = flux_batch(cwd, *args)
        print(f"without .plan.index: {no_index}", flush=True)
        kept = sorted(flux_batch(cwd, *args) for _ in range(3))[1]
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    assert all("nothing to do" in line for _, line in (no_index, kept)), (no_index, kept)
    n = f"{options.rows:,}"
    rows = [
        "| source | file | plan: read and check (s) | count pending (s) | make every item (s) | "
        "peak RSS (MiB) | RSS before the plan, imports done (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, plan in plans.items():
        assert plan["items"] == options.rows, plan
        rows.append(
            f"| {path.suffix[1:]}: {n} rows (id, prompt, category) | {sizes[path]:.1f} MiB | "
            f"{plan['check']:.1f} | {plan['count']:.1f} | {plan['make']:.1f} | {plan['peak']:.0f} | "
            f"{plan['before']:.0f} |"
        )
    body = "\n".join(
        [
            *rows,
            "",
            f"A finished run of the {n} Parquet rows, run again (whole `flux-batch` process, nothing "
            f"to do, no model loaded): {no_index[0]:.1f} s without `.plan.index` (the rows are read "
            f"and checked again), {kept[0]:.1f} s with it (median of 3; the file's name, size, mtime and first "
            "and last 64 KiB are read, not its rows). Both include the manifest's resume scan.",
        ]
    )
    name = "parquet_plan" if options.rows == 1_000_000 else f"parquet_plan_{options.rows}"
    write_section(name, f"Planning {n} Parquet rows", body, ("pyarrow", "hydra-core"), start_load)


if __name__ == "__main__":
    main()

"""How long `flux-batch` takes to find that a finished run of N items has nothing to do.

    python bench/resume_scan.py [--items 100000] [--repeat 3] [--baseline DIR] [--layout sharded]

Renders one item of an N-row JSONL file on the tiny model (so run.json and one real manifest
record exist), then completes the manifest with N records and N empty image files, which is
all a finished run's resume scan reads. Then times the same command, whole process, best of
--repeat: with the manifest's key index (`.metadata.index`, which any run leaves on exit),
without it (it is deleted before each try: the first start after a killed run or a manifest
edited by hand), and on a 1-item run for the fixed cost (Python, Hydra, imports).
--baseline DIR times another version too, in the same run: DIR holds its `flux_batch`
package (e.g. `git archive REV flux_batch | tar -x -C DIR`), put first on PYTHONPATH.
--layout sharded makes the run in the sharded layout (10,000 images per folder), --layout
webdataset in tar shards of 1,000 samples (each a real tar of small stand-in images, with its
index file), and writes the "resume_scan_<layout>" section. Targets: under 2 s for 100,000 items, under 5 s for 1,000,000,
without loading a model.
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


def flux_batch(cwd: Path, *args: str, code: str | None = None) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if code is not None:  # another version of the package, found before the installed one
        env["PYTHONPATH"] = code
    started = time.perf_counter()
    result = subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"flux-batch {' '.join(args)} failed:\n{result.stderr}")
    return seconds, result.stdout.strip().splitlines()[-1]


def finished_run(cwd: Path, items: int, layout: str = "flat") -> list[str]:
    """A run directory whose N items are all done; the flux-batch arguments that reach it."""
    from flux_batch.store.layouts import make_layout

    prompts = cwd / f"p{items}.jsonl"
    with open(prompts, "w") as f:
        for i in range(items):
            f.write(json.dumps({"id": f"item-{i:07d}", "prompt": f"a photo of object number {i}"}) + "\n")
    args = [
        f"dataset.path={prompts}",
        f"output.dir=run{items}",
        "runtime.progress=false",
        f"output.layout={layout}",
    ]
    flux_batch(cwd, *args, "limit=1")
    run_dir = cwd / f"run{items}"
    first = json.loads((run_dir / "metadata.jsonl").read_text().splitlines()[0])
    if layout == "webdataset":
        _finished_tars(run_dir, items, first)
        return args
    with open(run_dir / "metadata.jsonl", "w") as manifest:
        for i in range(items):
            stem = f"item-{i:07d}"
            file_name = make_layout(layout, 10_000).file_name(i, stem, ".png")
            record = dict(first, id=stem, file_name=file_name, prompt=f"a photo of object number {i}")
            manifest.write(json.dumps(record) + "\n")
            if i % 10_000 == 0:
                (run_dir / file_name).parent.mkdir(exist_ok=True)
            (run_dir / file_name).touch()
    return args


def _finished_tars(run_dir: Path, items: int, first: dict, per_tar: int = 1000) -> None:
    """N samples in tars of 1,000 (64-byte stand-in images), listed, each tar with its index and
    its stamp, as a run leaves them."""
    import hashlib

    from flux_batch.store.layouts.tar_check import Stamps
    from flux_batch.store.layouts.tar_names import placed, sample_key, tar_name
    from flux_batch.store.layouts.tars import Sample, sample_bytes, temp_path

    stamps = Stamps(run_dir, None)
    for path in (run_dir / "shards").iterdir():
        path.unlink()
    for path in (run_dir / "index").iterdir():
        path.unlink()
    with open(run_dir / "metadata.jsonl", "w") as manifest:
        for number in range(-(-items // per_tar)):
            name = tar_name(None, number)
            with open(temp_path(run_dir / name), "wb") as tar:
                for i in range(number * per_tar, min(items, (number + 1) * per_tar)):
                    image = i.to_bytes(8, "big") * 8
                    record = dict(
                        first,
                        id=f"item-{i:07d}",
                        prompt=f"a photo of object number {i}",
                        sha256=hashlib.sha256(image).hexdigest(),
                    )
                    sample = Sample(sample_key(i), "png", image, record, record["prompt"])
                    record = placed(record, name, f"{sample.key}.png")
                    tar.write(sample_bytes(sample, record))
                    manifest.write(json.dumps(record) + "\n")
                tar.write(b"\0" * 1024)
            temp_path(run_dir / name).rename(run_dir / name)
            stamps.add(run_dir / name)
            (run_dir / "index" / f"{number:06d}.parquet").touch()


def best(
    cwd: Path, args: list[str], repeat: int, code: str | None = None, before=lambda: None
) -> tuple[float, str]:
    runs = []
    for _ in range(repeat):
        before()
        runs.append(flux_batch(cwd, *args, code=code))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", help="a folder holding another version's flux_batch")
    parser.add_argument("--layout", choices=("flat", "sharded", "webdataset"), default="flat")
    options = parser.parse_args()
    start_load = machine()
    cwd = Path(tempfile.mkdtemp(prefix="flux-batch-scan-"))
    os.environ.setdefault("FLUX_BATCH_CACHE", str(cwd / "cache"))
    index = cwd / f"run{options.items}" / ".metadata.index"
    times = {}
    try:
        small_args = finished_run(cwd, 1, options.layout)
        large_args = finished_run(cwd, options.items, options.layout)
        if options.baseline:
            code = str(Path(options.baseline).resolve())
            times["baseline 1"] = best(cwd, small_args, options.repeat, code)
            times["baseline large"] = best(cwd, large_args, options.repeat, code)
        times["1"] = best(cwd, small_args, options.repeat)
        times["no index"] = best(
            cwd, large_args, options.repeat, before=lambda: index.unlink(missing_ok=True)
        )
        times["large"] = best(cwd, large_args, options.repeat)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    assert all("nothing to do" in line for _, line in times.values()), times
    n = f"{options.items:,}"
    rows = ["| finished run | seconds to find nothing to do (best of %d) |" % options.repeat, "|---|---|"]
    if options.baseline:
        rows += [
            f"| before (`{options.baseline}`): 1 item | {times['baseline 1'][0]:.2f} |",
            f"| before: {n} items | {times['baseline large'][0]:.2f} |",
        ]
    rows += [
        f"| 1 item (fixed cost: Python, Hydra, imports) | {times['1'][0]:.2f} |",
        f"| {n} items, no key index (first start after a kill or a hand edit) | {times['no index'][0]:.2f} |",
        f"| {n} items | {times['large'][0]:.2f} |",
    ]
    large = times["large"][0]
    no_index = times["no index"][0]
    target = 2 if options.items <= 100_000 else 5
    verdict = lambda seconds: "met" if seconds < target else "NOT met"  # noqa: E731
    body = "\n".join(
        [
            f"Layout: {options.layout}.",
            "",
            *rows,
            "",
            f"Target under {target} s for a finished run of {n} items: **{verdict(large)}** ({large:.2f} s, "
            f"{large - times['1'][0]:.2f} s above the fixed cost). The first start after a kill or "
            f"a hand edit, which parses the whole manifest: {verdict(no_index)} ({no_index:.2f} s). "
            "No model is loaded in any case.",
        ]
    )
    if options.baseline:
        before = times["baseline large"][0]
        body += (
            f"\n\nAgainst the version before, in this run: {large / before:.2f}× its time with "
            f"the index, {times['no index'][0] / before:.2f}× without."
        )
    name = "resume_scan" if options.layout == "flat" else f"resume_scan_{options.layout}"
    title = "Resume scan of a finished run" + ("" if options.layout == "flat" else f" ({options.layout})")
    write_section(name, title, body, ("hydra-core",), start_load)


if __name__ == "__main__":
    main()

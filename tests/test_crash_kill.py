"""SIGKILL at every dangerous moment, then resume: nothing lost, nothing twice, same pixels.

Each kill is followed by running the same command again (which may itself be killed). The
crash points (flux_batch/faults.py) put kills exactly where a real crash hurts most: during
model load, mid-denoise, half-way through an image's temp file, between the image's rename and
its manifest line, half-way through a manifest line, and just after it; on the image writer's
threads (encoded, not yet written) and while images wait for them. Timed kills add moments
no crash point names. `FLUX_BATCH_KILLS=N` sets how many timed kills run (default 2, so this
file makes 20 kills; the README gives the long run).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST, check_consistent, manifest, pixels, write_prompts

ROWS = [
    {"id": "fox", "prompt": "a red fox in the snow"},
    {"id": "boat", "prompt": "a sailing boat at sunset", "num_images": 2},
    {"prompt": "a castle on a hill"},
    {"id": "owl", "prompt": "an owl at night", "steps": 1},
]
STEPS_PER_ITEM = 2  # mid_denoise hits per item (owl has 1)

# (crash point, hit) for one run each, in order; several make progress, most make none.
SCHEDULE = [
    ("model_loaded", 1),
    ("mid_image_write", 1),  # a half-written temp file
    ("image_written", 1),  # an image on disk with no manifest line
    ("mid_append", 1),  # a torn manifest line, its image already renamed into place
    ("mid_denoise", 2),
    ("manifest_appended", 1),  # progress: fox
    ("mid_append", 1),
    ("mid_denoise", STEPS_PER_ITEM + 1),  # progress: boat k=0
    ("image_written", 1),  # the orphan is rendered again, not listed twice
    ("mid_append", 2),  # progress: boat k=1, then torn
    ("model_loaded", 1),
    ("mid_image_write", 1),
    ("image_written", 1),
    ("mid_denoise", 1),
    ("image_written", 2),  # progress: castle, then an orphan
    ("mid_append", 1),
    ("mid_denoise", 1),
    ("write_queued", 2),  # two images with the writers, neither listed yet
    ("image_encoded", 1),  # on a writer thread, before the image's temp file
    ("mid_image_write", 1),  # left for the final run to clean up
]


def check_finished(run_dir: Path, reference: dict) -> None:
    """Every item exactly once, no leftovers, the clean run's pixels."""
    records = check_consistent(run_dir)
    assert (run_dir / "metadata.jsonl").read_bytes().endswith(b"\n")
    keys = [(r["id"], r["k"]) for r in records]
    assert len(keys) == len(set(keys)), "an item is listed twice"
    assert set(keys) == set(reference), "an item is missing"
    on_disk = sorted(p.name for p in (run_dir / "images").iterdir())
    assert on_disk == sorted(Path(r["file_name"]).name for r in records)
    assert not [p for p in run_dir.rglob("*.tmp")], "temp files left behind"
    assert not (run_dir / "errors.jsonl").exists() or not (run_dir / "errors.jsonl").read_text()
    got = pixels(run_dir)
    for key, expected in reference.items():
        assert np.array_equal(got[key], expected), f"{key}: pixels differ from the clean run"


@pytest.fixture(scope="module")
def job(tmp_path_factory, cli_server):
    """The prompt file and the pixels of one clean, uninterrupted run of it."""
    cwd = tmp_path_factory.mktemp("kill")
    prompts = write_prompts(cwd / "prompts.jsonl", ROWS)
    args = (f"dataset.path={prompts}", *FAST)
    started = time.monotonic()
    result = cli_server(cwd, *args, "output.dir=clean")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout
    reference = pixels(cwd / "clean")
    assert len(reference) == 5
    return cwd, args, reference, seconds


def test_killed_at_every_crash_point_then_resumed(job, cli_server):
    cwd, args, reference, _ = job
    run = (*args, "output.dir=run")
    kills = 0
    for point, hit in SCHEDULE:
        result = cli_server(cwd, *run, env={"FLUX_BATCH_CRASH": f"{point}:{hit}"})
        assert result.returncode == -9, f"{point}:{hit} did not kill: {result.stdout}"
        kills += 1
        check_consistent(cwd / "run")
    assert kills == len(SCHEDULE) == 20
    images = cwd / "run" / "images"
    assert any(p.suffix == ".tmp" for p in images.iterdir())  # the last half-written file
    done = len(manifest(cwd / "run"))
    assert 0 < done < len(reference)  # the schedule left work for the last run

    final = cli_server(cwd, *run)
    assert final.returncode == 0, final.stdout
    assert f"rendered {len(reference) - done}, skipped {done} already done" in final.stdout
    check_finished(cwd / "run", reference)


def test_killed_at_random_moments_then_resumed(job, cli_server):
    cwd, args, reference, clean_seconds = job
    wanted = int(os.environ.get("FLUX_BATCH_KILLS", "2"))
    rng = random.Random(int(os.environ.get("FLUX_BATCH_KILL_SEED", "0")))
    kills, rounds = 0, 0
    full_run = clean_seconds  # how long a whole run takes now; the machine's load changes
    while kills < wanted:
        rounds += 1
        run = (*args, f"output.dir=random-{rounds}")
        for attempt in range(50):
            # a window that widens with each try, so a slower moment still finishes the job
            started = time.monotonic()
            result = cli_server(cwd, *run, kill_after=rng.uniform(0.0, full_run * (1 + attempt / 5)))
            if result.returncode == 0:
                if attempt == 0:
                    full_run = time.monotonic() - started
                break
            assert result.returncode == -9, result.stdout
            kills += 1
            check_consistent(cwd / f"random-{rounds}")
        else:
            pytest.fail("a run never finished between kills")
        check_finished(cwd / f"random-{rounds}", reference)
    assert kills >= wanted
    print(f"{kills} timed kills survived; {rounds} runs finished with every item once")

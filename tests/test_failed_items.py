"""Pipeline outputs that must not become dataset images (NaN, all black): logged in
errors.jsonl with id and reason, never written as valid; max_errors stops the run; the next
run retries them."""

from __future__ import annotations

import json

import numpy as np

from conftest import FAST, check_consistent, write_prompts
from flux_batch.store.images import defect

ROWS = [{"id": f"p{i}", "prompt": f"prompt number {i}"} for i in range(5)]


def errors(run_dir) -> list[dict]:
    path = run_dir / "errors.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_defect_rule():
    image = np.full((4, 4, 3), 0.3, dtype=np.float32)
    assert defect(image) is None
    dark = np.zeros_like(image)
    dark[0, 0, 0] = 1 / 255  # one pixel at 1/255 after rounding: dark, not black
    assert defect(dark) is None
    assert "all-black" in defect(np.zeros_like(image))
    assert "all-black" in defect(np.full_like(image, 0.0019))  # rounds to 0 in 8 bits
    assert "all-black" in defect(np.full_like(image, -0.5))  # clipped to 0
    poisoned = image.copy()
    poisoned[2, 1, 0] = np.nan
    assert "non-finite" in defect(poisoned)
    assert "non-finite" in defect(np.full_like(image, np.inf))


def test_nan_and_black_images_are_failed_items_and_retried(cli_server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    first = cli_server(
        tmp_path, *args, env={"FLUX_BATCH_CRASH": "pipeline_image:2:nan,pipeline_image:4:black"}
    )
    assert first.returncode == 0, first.stdout
    assert "rendered 3, skipped 0 already done, failed 2" in first.stdout
    failed = errors(tmp_path / "run")
    assert [(e["id"], e["k"]) for e in failed] == [("p1", 0), ("p3", 0)]
    assert "non-finite pixels (NaN/inf)" in failed[0]["reason"]
    assert "all-black image (every pixel 0 in 8 bits)" in failed[1]["reason"]
    assert [r["id"] for r in check_consistent(tmp_path / "run")] == ["p0", "p2", "p4"]
    assert sorted(p.name for p in (tmp_path / "run" / "images").iterdir()) == ["p0.png", "p2.png", "p4.png"]

    retry = cli_server(tmp_path, *args)
    assert "rendered 2, skipped 3 already done, failed 0" in retry.stdout
    assert sorted(r["id"] for r in check_consistent(tmp_path / "run")) == [r["id"] for r in ROWS]
    assert errors(tmp_path / "run") == []  # retried with success: no longer listed


def test_more_failures_than_max_errors_stop_the_run(cli_server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    stopped = cli_server(tmp_path, *args, "max_errors=1", env={"FLUX_BATCH_CRASH": "pipeline_image:2+:nan"})
    assert stopped.returncode == 1, stopped.stdout
    assert "flux-batch: error: 2 items failed (max_errors=1)" in stopped.stdout
    assert "The last: p2 (k=0): the pipeline returned non-finite pixels" in stopped.stdout
    assert "Traceback" not in stopped.stdout
    assert [e["id"] for e in errors(tmp_path / "run")] == ["p1", "p2"]
    assert [r["id"] for r in check_consistent(tmp_path / "run")] == ["p0"]  # p3, p4 never tried

    retry = cli_server(tmp_path, *args)
    assert "rendered 4, skipped 1 already done, failed 0" in retry.stdout
    assert errors(tmp_path / "run") == []


def test_the_default_max_errors_is_small(cli_server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    result = cli_server(
        tmp_path,
        f"dataset.path={prompts}",
        "output.dir=run",
        *FAST,
        env={"FLUX_BATCH_CRASH": "pipeline_image:1+:black"},
    )
    assert result.returncode == 1
    assert "4 items failed (max_errors=3)" in result.stdout
    assert not (tmp_path / "run" / "metadata.jsonl").exists() or not check_consistent(tmp_path / "run")

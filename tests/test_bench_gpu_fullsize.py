"""bench/gpu_fullsize.py runs to completion at tiny scale on a CPU and writes its table."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import REPO


def test_gpu_fullsize_runs_at_tiny_scale(tmp_path, model_cache):
    results = tmp_path / "RESULTS.md"
    # 1 timed image per row, a large batch of 2, dynamo's eager backend (inductor's C++ build
    # takes minutes on a CPU): every row of the table, the same code paths as at full scale
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_fullsize.py"),
            "--scale",
            "tiny",
            "--images",
            "1",
            "--batch",
            "2",
            "--compile-backend",
            "eager",
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # tiny ops: one thread, no barrier waits
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert "<!-- gpu_fullsize_tiny:begin -->" in text and "<!-- gpu_fullsize_tiny:end -->" in text
    rows = re.findall(r"^\| (\d+) \| (.+?) \| ([\d.]+) \| ([\d.]+) \| - \|", text, re.M)
    assert [int(r[0]) for r in rows] == list(range(1, 17))
    labels = [r[1] for r in rows]
    assert labels[0] == "Q8_0, per_item, model offload, batch 1"
    assert labels[5] == "Q8_0, phased, resident, batch 2, compiled"
    assert labels[12] == "Q8_0, phased, resident, batch 2, compiled, First Block Cache 0.08"
    assert labels[14] == "Q8_0, phased, resident, batch 2, TaylorSeer interval 2"
    assert all(float(r[2]) > 0 for r in rows)
    assert "32x32, 2 steps" in text

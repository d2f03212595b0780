"""Progress during long items: off a terminal, a line at least every interval while an item
renders, naming the step, the time per step and the run's ETA."""
from __future__ import annotations

import re

from conftest import write_prompts

LINE = re.compile(r"step (\d) of 4, (\d+\.\d) s/step, ETA for the run (\d+:\d\d|unknown)$")


def test_slow_steps_log_progress_lines_off_a_terminal(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "fox", "prompt": "a red fox"},
                                                   {"id": "owl", "prompt": "an owl"}])
    args = [f"dataset.path={prompts}", "sampler.steps=4", "sampler.width=32", "sampler.height=32",
            "batch_size=1", "runtime.schedule=per_item"]
    slow = {"FLUX_BATCH_STEP_DELAY": "0.4", "FLUX_BATCH_PROGRESS_INTERVAL": "0.5"}
    result = cli(*args, "runtime.progress=true", env=slow)  # output captured: not a terminal
    found = [LINE.search(line) for line in result.stdout.splitlines()]
    found = [m for m in found if m]
    assert len(found) >= 4, result.stdout  # 2 items x 4 steps x 0.4 s, a line every 0.5 s
    assert all(float(m[2]) >= 0.4 for m in found), result.stdout
    assert any(m[3] != "unknown" for m in found), result.stdout
    assert "rendered 2" in result.stdout
    quiet = cli(*args, "runtime.progress=false", "output.dir=quiet", env=slow)
    assert not any(LINE.search(line) for line in quiet.stdout.splitlines()), quiet.stdout

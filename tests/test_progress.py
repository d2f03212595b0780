"""Progress during long items: off a terminal, a line at least every interval while an item
renders, naming the step, the time per step and the run's ETA."""

from __future__ import annotations

import re

from conftest import write_prompts

LINE = re.compile(r"step (\d) of 4, (\d+\.\d) s/step, ETA for the run (\d+:\d\d|unknown)$")


def test_slow_steps_log_progress_lines_off_a_terminal(cli, tmp_path):
    prompts = write_prompts(
        tmp_path / "p.jsonl", [{"id": "fox", "prompt": "a red fox"}, {"id": "owl", "prompt": "an owl"}]
    )
    args = [
        f"dataset.path={prompts}",
        "sampler.steps=4",
        "sampler.width=32",
        "sampler.height=32",
        "batch_size=1",
        "runtime.schedule=per_item",
    ]
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


def test_on_a_terminal_the_image_bar_names_the_step(cli, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    from conftest import script

    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "fox", "prompt": "a red fox"}])
    master, terminal = pty.openpty()  # stderr is a terminal: tqdm draws its bar there
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # 160 columns
    proc = subprocess.Popen(
        [
            script("flux-batch"),
            "model=tiny",
            f"dataset.path={prompts}",
            "sampler.steps=4",
            "sampler.width=32",
            "sampler.height=32",
            "runtime.progress=true",
        ],
        cwd=cli.cwd,
        env={**cli.env, "FLUX_BATCH_STEP_DELAY": "0.3"},
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        drawn += chunk
    stdout, _ = proc.communicate(timeout=300)
    os.close(master)
    assert proc.returncode == 0, stdout
    steps = set(re.findall(rb"step=(\d)/4", drawn))
    assert {b"1", b"2", b"3", b"4"} <= steps, drawn[-2000:]
    assert not any(LINE.search(line) for line in stdout.splitlines())  # the bar, not log lines

"""Ctrl-C and SIGTERM (what SLURM sends before preemption), through the installed CLI: the
manifest stays consistent, the exit status is 130 / 143, and the same command finishes."""

from __future__ import annotations

import os
import signal

from conftest import FAST, check_consistent, manifest, wait_until_stopped, write_prompts

ROWS = [{"id": f"p{i}", "prompt": f"prompt number {i}"} for i in range(3)]


def stop_with(cli, args, fault: str, signum: int):
    """Run until the fault point stops the process, deliver `signum`, let it go on."""
    proc = cli.popen(*args, env={"FLUX_BATCH_CRASH": fault})
    try:
        wait_until_stopped(proc)
        os.kill(proc.pid, signum)
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, stderr


def test_sigterm_mid_batch_then_sigint_during_load_then_resume(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    # SIGTERM on the first denoising step of the second item: the first is kept, the second dropped
    status, stderr = stop_with(cli, args, "mid_denoise:3:stop", signal.SIGTERM)
    assert status == 143, stderr
    assert "stopped by SIGTERM; run the same command to finish" in stderr
    assert "Traceback" not in stderr
    assert [r["id"] for r in check_consistent(cli.cwd / "run")] == ["p0"]
    assert sorted(p.name for p in (cli.cwd / "run" / "images").iterdir()) == ["p0.png"]

    status, stderr = stop_with(cli, args, "model_loaded:1:stop", signal.SIGINT)
    assert status == 130, stderr
    assert "stopped by SIGINT" in stderr and "Traceback" not in stderr
    assert [r["id"] for r in check_consistent(cli.cwd / "run")] == ["p0"]

    resumed = cli(*args)
    assert "rendered 2, skipped 1 already done" in resumed.stdout
    assert sorted(r["id"] for r in manifest(cli.cwd / "run")) == ["p0", "p1", "p2"]


def test_a_second_signal_mid_append_stops_at_once_and_cuts_the_half_line(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    proc = cli.popen(*args, env={"FLUX_BATCH_CRASH": "mid_append:2:stop"})
    path = cli.cwd / "run" / "metadata.jsonl"
    try:
        wait_until_stopped(proc)
        assert not path.read_bytes().endswith(b"\n")  # p1's line is half on disk
        # two signals: the first asks for a stop after the batch, the second stops at once
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGINT)
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode in (130, 143), stderr
    assert "Traceback" not in stderr
    assert path.read_bytes().count(b"\n") == 1 and path.read_bytes().endswith(b"\n")
    assert [r["id"] for r in check_consistent(cli.cwd / "run")] == ["p0"]

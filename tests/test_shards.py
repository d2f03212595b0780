"""Shards (`runtime.shard=i runtime.num_shards=n`): independent jobs that share one run
directory without ever meeting, as the tasks of a Slurm array do; a preempted shard requeues."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from pathlib import Path

from conftest import FAST, PROMPTS, check_consistent, manifest, pixels, write_prompts

FIVE = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[4], PROMPTS[6]]


def last_line(result) -> str:
    assert result.returncode == 0, result.stdout
    return result.stdout.strip().splitlines()[-1]


def test_three_shards_one_after_another_render_every_item_once(cli, cli_server):
    prompts = write_prompts(cli.cwd / "p.jsonl", FIVE)
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST, "runtime.num_shards=3")
    run_dir = cli.cwd / "run"
    dry = cli_server(cli.cwd, *args, "runtime.shard=1", "runtime.dry_run=true")
    assert last_line(dry).startswith(f"{run_dir}: shard 1/3 on cpu: 2 of 2 pending items (boat ... ")
    assert not (run_dir / "images").exists()  # a dry run renders nothing

    for shard, count in ((0, 2), (1, 2), (2, 1)):  # uneven: plan positions 0,3 / 1,4 / 2
        line = last_line(cli_server(cli.cwd, *args, f"runtime.shard={shard}"))
        assert line.startswith(f"{run_dir}: rendered {count}, skipped 0 already done, failed 0 (")
        assert line.endswith(f"{count} items in the plan, shard {shard}/3)")
        assert not list(run_dir.glob("metadata.*.jsonl"))  # each shard merged its part at its end
    ids = [r["id"] for r in check_consistent(run_dir)]
    assert len(ids) == 5 and ids[:4] == ["fox", "tall", "boat", "owl"]  # the castle: shard 2

    assert last_line(cli_server(cli.cwd, *args, "runtime.shard=0")) == (
        f"{run_dir}: nothing to do, all 2 items already done, shard 0/3"
    )
    one = cli_server(cli.cwd, f"dataset.path={prompts}", "output.dir=one", *FAST)
    assert last_line(one).startswith(f"{cli.cwd / 'one'}: rendered 5,")
    expected, got = pixels(cli.cwd / "one"), pixels(run_dir)
    assert got.keys() == expected.keys() and all((got[k] == expected[k]).all() for k in expected)


def hold(path: Path, shared: bool = False, pid: str = ""):
    f = open(path, "a+")
    fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    if pid:
        f.write(pid)
        f.flush()
    return f


def test_a_live_shard_keeps_its_part_and_keeps_out_an_unsharded_run(cli, cli_server):
    prompts = write_prompts(cli.cwd / "p.jsonl", FIVE[:2])
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    run_dir = cli.cwd / "run"
    run_dir.mkdir()
    # shard 1 of 2 is alive elsewhere: it holds the run lock shared and its part lock
    record = cli_server(cli.cwd, *args, "output.dir=ref", "limit=2")
    lines = (cli.cwd / "ref" / "metadata.jsonl").read_text().splitlines()
    (run_dir / "images").mkdir()
    boat = json.loads(lines[1])
    (run_dir / boat["file_name"]).write_bytes((cli.cwd / "ref" / boat["file_name"]).read_bytes())
    (run_dir / "metadata.shard-1.jsonl").write_text(lines[1] + "\n")
    with hold(run_dir / ".lock", shared=True), hold(run_dir / ".lock.shard-1", pid="4242\n"):
        refused = cli_server(cli.cwd, *args)
        assert refused.returncode == 75
        assert "held by the shards of a sharded run (their pids are in .lock.shard-*)" in refused.stdout
        twin = cli_server(cli.cwd, *args, "runtime.shard=1", "runtime.num_shards=2")
        assert twin.returncode == 75  # a second job of the same shard
        assert f"lock file {run_dir / '.lock.shard-1'}, held by pid 4242" in twin.stdout
        line = last_line(cli_server(cli.cwd, *args, "runtime.shard=0", "runtime.num_shards=2"))
        assert line.startswith(f"{run_dir}: rendered 1, skipped 0 already done")
        assert [r["id"] for r in manifest(run_dir)] == ["fox"]
        assert (run_dir / "metadata.shard-1.jsonl").exists()  # never merged while its writer lives
    assert record.returncode == 0
    line = last_line(cli_server(cli.cwd, *args))  # the shard gone, its part merges
    assert line == f"{run_dir}: nothing to do, all 2 items already done"
    assert [r["id"] for r in manifest(run_dir)] == ["fox", "boat"]


def shard_pids(sweep_dir: Path) -> dict[str, int]:
    try:
        jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    except (OSError, ValueError, KeyError):
        return {}
    return {k: v["pid"] for job in jobs for k, v in job.get("shards", {}).items() if "pid" in v}


def stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def wait_for(condition, proc, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_two_shards_through_submitit_local_and_one_requeued_by_sigusr2(cli):
    """Each shard stops itself after its second image (a `stop` fault): shard 1 is let go,
    shard 0 gets SIGUSR2 as Slurm sends before preemption, stops cleanly, and submitit
    requeues it; the requeued job finishes the shard."""
    prompts = write_prompts(cli.cwd / "p.jsonl", FIVE)
    sweep_dir = cli.cwd / "sw"
    # per_item, writing on the render path: otherwise shard 0's third image is already rendered
    # when it stops, and SIGUSR2 writes it before exiting, leaving the requeued job nothing to do
    proc = cli.popen(
        "-m",
        "hydra/launcher=flux_submitit_local",
        "runtime.num_shards=2",
        "runtime.shard=0,1",
        "hydra.sweep.dir=sw",
        f"dataset.path={prompts}",
        *FAST,
        "runtime.schedule=per_item",
        "runtime.writers=0",
        env={"FLUX_BATCH_CRASH": "manifest_appended:2:stop"},
    )
    try:
        pids = wait_for(
            lambda: (
                (p := shard_pids(sweep_dir)) and len(p) == 2 and all(stopped(pid) for pid in p.values()) and p
            ),
            proc,
        )
        os.kill(pids["1"], signal.SIGCONT)
        os.kill(pids["0"], signal.SIGUSR2)
        os.kill(pids["0"], signal.SIGCONT)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    run_dir = sweep_dir / "single"  # the shards share the job folder: shard keys name no folder
    # shard 1 rendered 2; shard 0's requeued process found 2 done and rendered the third
    assert out.strip().splitlines()[-1] == (
        f"{sweep_dir}: 1 jobs, 1 done; rendered 3, skipped 2 already done, failed 0; model loaded 2 time(s)"
    )
    records = check_consistent(run_dir)
    assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records})
    assert len(records) == 5 and not list(run_dir.glob("metadata.*.jsonl"))
    job = json.loads((sweep_dir / "sweep.json").read_text())["jobs"][0]
    assert job["state"] == "done" and job["num_shards"] == 2
    assert (job["rendered"], job["skipped"], job["total"]) == (3, 2, 5)
    assert job["shards"]["0"]["pid"] != pids["0"]  # shard 0 finished in its requeued process
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*.err"))
    assert "stopped by SIGUSR2" in logs and "Caught signal SIGUSR2" in logs  # submitit requeued it

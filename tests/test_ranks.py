"""Data-parallel rendering under `accelerate launch` (torchrun, gloo on CPU): the ranks share
one run directory, render disjoint items, and leave the pixels and manifest of one process."""

from __future__ import annotations

import socket
import subprocess

from conftest import (
    FAST,
    PROMPTS,
    TEST_MODEL,
    check_consistent,
    manifest,
    pixels,
    script,
    with_model,
    write_prompts,
)

# five items of assorted sizes and step counts: 3 + 2 on two ranks, 2 + 2 + 1 on three
FIVE = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[4], PROMPTS[6]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cli, processes: int, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N flux-batch ARGS`: torchrun with N ranks
    (on a CPU machine `--cpu` would start one process)."""
    command = [
        script("accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        script("flux-batch"),
        *with_model(args, TEST_MODEL),
    ]
    return subprocess.run(
        command, cwd=cli.cwd, capture_output=True, text=True, timeout=300, env={**cli.env, **(env or {})}
    )


def reference(cli, cli_server, prompts) -> dict:
    result = cli_server(cli.cwd, f"dataset.path={prompts}", "output.dir=one", *FAST)
    assert result.returncode == 0, result.stdout
    return pixels(cli.cwd / "one")


def no_parts_left(run_dir) -> bool:
    return not list(run_dir.glob("metadata.*.jsonl")) and not list(run_dir.glob("errors.*.jsonl"))


def test_two_ranks_render_the_pixels_and_manifest_of_one_process(cli, cli_server):
    prompts = write_prompts(cli.cwd / "p.jsonl", FIVE)
    expected = reference(cli, cli_server, prompts)
    result = launch(cli, 2, f"dataset.path={prompts}", "output.dir=two", *FAST)
    assert result.returncode == 0, result.stderr
    run_dir = cli.cwd / "two"
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(f"{run_dir}: rendered 5, skipped 0 already done, failed 0 (")
    )
    assert result.stdout.strip().endswith("5 items in the plan, 2 ranks)")
    assert result.stdout.count("rendered") == 1  # one summary, from rank 0
    plan = [r["id"] for r in manifest(cli.cwd / "one")]
    # rank 0's part (plan items 0, 2, 4) was merged before rank 1's (items 1, 3)
    assert [r["id"] for r in manifest(run_dir)] == [plan[i] for i in (0, 2, 4, 1, 3)]
    one = {(r["id"], r["k"]): r for r in manifest(cli.cwd / "one")}
    assert {(r["id"], r["k"]): r for r in check_consistent(run_dir)} == one  # sha256 too
    got = pixels(run_dir)
    assert got.keys() == expected.keys()
    assert all((got[key] == expected[key]).all() for key in expected)
    assert no_parts_left(run_dir)


def test_killed_ranks_resume_with_another_number_of_ranks(cli, cli_server):
    prompts = write_prompts(cli.cwd / "p.jsonl", FIVE)
    expected = reference(cli, cli_server, prompts)
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    run_dir = cli.cwd / "run"
    killed = launch(cli, 2, *args, env={"FLUX_BATCH_CRASH": "manifest_appended:1"})
    assert killed.returncode != 0
    parts = sorted(p.name for p in run_dir.glob("metadata.rank-*.jsonl"))
    assert parts and set(parts) <= {"metadata.rank-0.jsonl", "metadata.rank-1.jsonl"}
    done = sum(len(manifest_lines(run_dir / name)) for name in parts)
    assert 1 <= done <= 2

    resumed = launch(cli, 3, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        resumed.stdout.strip()
        .splitlines()[-1]
        .startswith(f"{run_dir}: rendered {5 - done}, skipped {done} already done, failed 0 (")
    )
    records = check_consistent(run_dir)
    assert sorted((r["id"], r["k"]) for r in records) == sorted(expected)  # each item once
    got = pixels(run_dir)
    assert all((got[key] == expected[key]).all() for key in expected)
    assert no_parts_left(run_dir)

    alone = cli_server(cli.cwd, *args)  # and one process finds it finished
    assert alone.stdout.strip().splitlines()[-1] == f"{run_dir}: nothing to do, all 5 items already done"


def manifest_lines(path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n")[:-1]]

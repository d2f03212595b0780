"""The run directory across runs: lock, torn manifest lines, settings fingerprint."""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from conftest import FAST, PROMPTS, manifest, wait_until_stopped, write_prompts


def test_a_second_writer_is_refused_naming_lock_and_pid(cli):
    run_dir = cli.cwd / "run"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:  # another process holding the run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        result = cli("output.dir=run", check=False)
    assert result.returncode == 75
    assert f"lock file {run_dir / '.lock'}, held by pid 4242" in result.stderr
    assert not (run_dir / "metadata.jsonl").exists()


def test_a_stale_lock_file_does_not_block(cli):
    run_dir = cli.cwd / "run"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("999999\n")  # left by a killed process: no flock held
    result = cli("output.dir=run", "limit=1")
    assert "rendered 1," in result.stdout


def test_a_torn_last_line_is_cut_off_and_the_item_rendered_again(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:3])
    cli(f"dataset.path={prompts}", "output.dir=run")
    path = cli.cwd / "run" / "metadata.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + lines[2][:25])  # a crash mid-append
    resumed = cli(f"dataset.path={prompts}", "output.dir=run")
    assert "rendered 1, skipped 2 already done" in resumed.stdout
    records = manifest(cli.cwd / "run")
    assert [r["id"] for r in records] == [r["id"] for r in json_lines(lines)]
    assert path.read_bytes().endswith(b"\n")


def json_lines(lines: list[bytes]) -> list[dict]:
    return [json.loads(line) for line in lines]


def test_a_malformed_middle_line_is_an_error_naming_file_and_line(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:3])
    cli(f"dataset.path={prompts}", "output.dir=run")
    path = cli.cwd / "run" / "metadata.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    result = cli(f"dataset.path={prompts}", "output.dir=run", check=False)
    assert result.returncode == 2
    assert f"{path}:2: malformed manifest line" in result.stderr
    assert path.read_text().splitlines()[1] == "{not json"  # left for the user to inspect


def test_a_manifest_line_whose_image_is_gone_renders_again(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:3])
    cli(f"dataset.path={prompts}", "output.dir=run")
    os.unlink(cli.cwd / "run" / "images" / "fox.png")
    resumed = cli(f"dataset.path={prompts}", "output.dir=run")
    assert "rendered 1, skipped 2 already done" in resumed.stdout
    ids = [r["id"] for r in manifest(cli.cwd / "run")]
    assert sorted(ids) == sorted(set(ids)) and "fox" in ids


def test_an_explicit_run_dir_with_other_settings_is_refused(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:1])
    cli(f"dataset.path={prompts}", "output.dir=run")
    result = cli(f"dataset.path={prompts}", "output.dir=run", "sampler.steps=3", "seed=7", check=False)
    assert result.returncode == 2
    assert "holds a run with other settings" in result.stderr
    assert "sampler.steps (4 -> 3)" in result.stderr and "seed (0 -> 7)" in result.stderr


def test_settings_that_do_not_change_pixels_resume_the_same_run(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:3])
    first = cli(f"dataset.path={prompts}", "limit=1")
    second = cli(f"dataset.path={prompts}", "batch_size=2", "runtime.progress=false")
    assert first.stdout.split(":")[0] == second.stdout.split(":")[0]
    assert "rendered 2, skipped 1 already done" in second.stdout


def test_two_real_processes_on_one_run_and_a_killed_holder(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:2])
    args = (f"dataset.path={prompts}", "output.dir=run", *FAST)
    first = cli.popen(*args, env={"FLUX_BATCH_CRASH": "model_loaded:1:stop"})  # holds the lock
    try:
        wait_until_stopped(first)
        second = cli(*args, check=False)
        assert second.returncode == 75
        lock = cli.cwd / "run" / ".lock"
        assert f"(lock file {lock}, held by pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()  # SIGKILL: the holder dies without releasing anything by hand
        first.wait()
    assert (cli.cwd / "run" / ".lock").exists()  # stale, yet no obstacle
    third = cli(*args)
    assert "rendered 2, skipped 0 already done" in third.stdout
    assert len(manifest(cli.cwd / "run")) == 2


def test_manifest_repair_on_open_keeps_one_line_per_finished_image(tmp_path):
    from flux_batch.store.run_dir import RunStore

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    for name in ("a.png", "b.png", "orphan.png"):
        (run / "images" / name).write_bytes(b"x")

    def line(i, extra=""):
        return json.dumps({"id": i, "k": 0, "file_name": f"images/{i}.png", "n": extra})

    (run / "metadata.jsonl").write_text(
        "\n".join(
            [
                line("a", "first"),
                "",
                line("gone"),
                line("b"),
                line("a", "again"),
            ]
        )
        + "\n"
        + line("c")[:20]
    )  # a blank line, a missing image, a repeat, a torn tail
    store = RunStore(run)
    store.open()
    store.close()
    records = manifest(run)
    assert [(r["id"], r["n"]) for r in records] == [("b", ""), ("a", "again")]
    assert store.manifest.done() == {("a", 0), ("b", 0)}  # the orphan and "gone" render again


def test_a_finished_run_resumes_without_parsing_its_prompt_file(cli, hydra_config, monkeypatch):
    """The run keeps its plan's keys (.plan.index) for the prompt file's bytes and settings: a
    resume with nothing pending does not parse the file; an edited file is parsed again."""
    from conftest import compose_config
    from flux_batch import driver

    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:3])
    args = (f"dataset.path={prompts}", *FAST)
    cli(*args, "output.dir=run")
    assert (cli.cwd / "run" / ".plan.index").exists()

    def not_parsed(*args, **kwargs):
        raise AssertionError("the prompt file was parsed")

    monkeypatch.setattr(driver, "read_rows", not_parsed)
    summary = driver.run(compose_config(*args), cli.cwd / "run")
    assert summary.line() == f"{cli.cwd / 'run'}: nothing to do, all 3 items already done"
    write_prompts(prompts, PROMPTS[:4])  # one more row: other bytes
    with pytest.raises(AssertionError, match="the prompt file was parsed"):
        driver.run(compose_config(*args), cli.cwd / "run")
    monkeypatch.undo()
    assert "rendered 2, skipped 3 already done" in cli(*args, "output.dir=run").stdout

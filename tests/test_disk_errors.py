"""A full or failing disk (ENOSPC, EIO) while writing an image or a manifest line: the run stops
with a clear message and exit 1, nothing half-written stays listed, the next run resumes."""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import FAST, check_consistent, manifest, write_prompts
from flux_batch import faults
from flux_batch.store.append_log import AppendLog

ROWS = [{"id": f"p{i}", "prompt": f"prompt number {i}"} for i in range(4)]


@pytest.fixture
def armed():
    yield faults.configure
    faults.configure("")


def test_a_failed_append_is_cut_back_so_the_next_line_stands_alone(tmp_path, armed):
    log = AppendLog(tmp_path / "log.jsonl", fault_point="mid_append")
    armed("mid_append:2:ENOSPC")
    log.append({"n": 1})
    with pytest.raises(OSError) as failure:
        log.append({"n": 2})  # half of the line reaches the disk, then the disk is full
    assert failure.value.errno == errno.ENOSPC
    assert (tmp_path / "log.jsonl").read_bytes() == b'{"n": 1}\n'
    log.append({"n": 3})
    log.close()
    assert [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [
        {"n": 1},
        {"n": 3},
    ]


def test_a_torn_tail_is_cut_off_when_the_log_is_opened(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": 2, "trunc')  # a crash mid-append
    log = AppendLog(path)
    log.append({"n": 3})
    log.close()
    assert path.read_bytes() == b'{"n": 1}\n{"n": 3}\n'


def test_a_torn_line_with_no_newline_at_all_is_cut_off(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"n": 1, "trunc')
    log = AppendLog(path)
    log.append({"n": 2})
    log.close()
    assert path.read_bytes() == b'{"n": 2}\n'


# Run after run on one run directory: each fault stops a run that had rendered (hit - 1) items.
DISK_FAULTS = [
    ("mid_image_write:2:ENOSPC", "No space left on device"),
    ("mid_append:2:EIO", "Input/output error"),  # half a line written, then cut back
    ("mid_append:1:ENOSPC", "No space left on device"),
    ("mid_image_write:1:EIO", "Input/output error"),
]


def test_write_errors_stop_the_run_and_the_next_run_resumes(cli_server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    args = (f"dataset.path={prompts}", *FAST, "output.dir=run")
    done = 0
    for fault, reason in DISK_FAULTS:
        failed = cli_server(tmp_path, *args, env={"FLUX_BATCH_CRASH": fault})
        assert failed.returncode == 1, failed.stdout
        assert f"flux-batch: error: cannot write to {tmp_path / 'run'}: {reason}" in failed.stdout
        assert "run the same command to resume" in failed.stdout
        assert "Traceback" not in failed.stdout
        done += int(fault.split(":")[1]) - 1
        listed = check_consistent(tmp_path / "run")  # every line whole, every image intact
        assert [r["id"] for r in listed] == [f"p{i}" for i in range(done)]
        assert (tmp_path / "run" / "metadata.jsonl").read_bytes().endswith(b"\n")
        assert not list((tmp_path / "run").rglob("*.tmp"))

    resumed = cli_server(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stdout
    assert f"rendered {len(ROWS) - done}, skipped {done} already done" in resumed.stdout
    keys = [(r["id"], r["k"]) for r in check_consistent(tmp_path / "run")]
    assert sorted(keys) == [(f"p{i}", 0) for i in range(len(ROWS))]
    assert len(list((tmp_path / "run" / "images").iterdir())) == len(ROWS)
    assert len(manifest(tmp_path / "run")) == len(ROWS)


def test_when_even_the_cut_back_fails_the_next_append_repairs_first(tmp_path, armed, monkeypatch):
    path = tmp_path / "log.jsonl"
    log = AppendLog(path, fault_point="mid_append")
    armed("mid_append:2:EIO")
    log.append({"n": 1})

    def failing_truncate(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "ftruncate", failing_truncate)
        with pytest.raises(OSError):
            log.append({"n": 2})
    assert path.read_bytes().startswith(b'{"n": 1}\n{"n"')  # the half line is still there
    log.append({"n": 3})
    log.close()
    assert path.read_bytes() == b'{"n": 1}\n{"n": 3}\n'


FULL = "/dev/full"  # every write to it fails with ENOSPC, as on a full disk


@pytest.mark.skipif(not os.path.exists(FULL), reason="needs /dev/full (Linux)")
def test_a_full_disk_at_the_start_fails_the_run_like_any_later_write(cli_server, tmp_path):
    """Hydra's first write into the run directory (.hydra/config.yaml, before the app starts)
    meets a full disk: exit 1 and the one line of any failed write, not the 2 of a refused
    config; with room again the same command renders everything."""
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS[:1])
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").symlink_to(FULL)
    args = (f"dataset.path={prompts}", *FAST, f"output.dir={run}")
    failed = cli_server(tmp_path, *args)
    assert failed.returncode == 1, failed.stdout
    assert failed.stdout.strip() == (
        f"flux-batch: error: cannot write to {run}: No space left on device; the run stopped and "
        "everything listed in the manifest is intact: fix the cause and run the same command to resume"
    )
    assert not (run / "metadata.jsonl").exists()

    (run / ".hydra" / "config.yaml").unlink()  # room again
    resumed = cli_server(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stdout
    assert [r["id"] for r in check_consistent(run)] == ["p0"]


def test_a_run_directory_hydra_cannot_write_into_is_refused_in_one_line(cli_server, tmp_path):
    """Not a full disk but a place that cannot hold a run (here .hydra/config.yaml is a folder):
    one line naming the run directory, exit 2 like any refused run directory, nothing rendered."""
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS[:1])
    run = tmp_path / "run"
    (run / ".hydra" / "config.yaml").mkdir(parents=True)
    refused = cli_server(tmp_path, f"dataset.path={prompts}", *FAST, f"output.dir={run}")
    assert refused.returncode == 2, refused.stdout
    assert refused.stdout.strip() == f"flux-batch: error: cannot use the run directory {run}: Is a directory"
    assert not (run / "metadata.jsonl").exists()


def test_a_full_disk_when_the_run_directory_is_opened_is_a_failed_write(tmp_path, monkeypatch):
    """The lock's pid is the run's first own write: ENOSPC there is exit 1, as later."""
    from flux_batch.errors import EXIT_FAILED, WriteError
    from flux_batch.store.run_dir import RunStore

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(
        WriteError,
        match=r"cannot write to .*: No space left on device; the run "
        r"stopped .* run the same command to resume",
    ) as failure:
        RunStore(tmp_path / "run").open()
    assert failure.value.exit_code == EXIT_FAILED


def test_a_run_directory_that_is_a_file_is_still_refused_as_bad_input(tmp_path):
    from flux_batch.errors import EXIT_BAD_INPUT, RunDirError
    from flux_batch.store.run_dir import RunStore

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(RunDirError, match="cannot use the run directory") as refused:
        RunStore(tmp_path / "run").open()
    assert refused.value.exit_code == EXIT_BAD_INPUT

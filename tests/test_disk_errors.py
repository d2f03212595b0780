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
        {"n": 1}, {"n": 3}]


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
    ("mid_append:2:EIO", "Input/output error"),     # half a line written, then cut back
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

"""The manifest's key index: trusted only while it matches the manifest, so what a run finds
done is always what metadata.jsonl says, after crashes, torn tails and hand edits too."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from flux_batch.errors import RunDirError
from flux_batch.store import manifest_index
from flux_batch.store.run_dir import RunStore


def record(item_id: str, k: int = 0) -> dict:
    return {"file_name": f"images/{item_id}.png", "id": item_id, "k": k, "prompt": item_id}


def line(item_id: str) -> str:
    return json.dumps(record(item_id)) + "\n"


def finish(store: RunStore, *ids: str) -> None:
    """Render `ids` as the driver does: image file first, then its manifest line."""
    for item_id in ids:
        store.save_image(f"images/{item_id}.png", b"png")
        store.manifest.append(record(item_id))


def opened(run) -> RunStore:
    store = RunStore(run)
    store.open()
    return store


def reopened_keys(run) -> set:
    store = opened(run)
    store.close()
    return store.manifest.done()


def parsed_keys(run) -> list:
    return [(r["id"], r["k"]) for r in map(json.loads, (run / "metadata.jsonl").read_text().splitlines())]


def index_keys(run) -> list:
    data = (run / "metadata.jsonl").read_bytes()
    entries, covered = manifest_index.read(run / manifest_index.INDEX, data)
    assert covered == len(data), "the index covers the whole manifest"
    return [key for key, _ in entries]


@pytest.fixture
def run(tmp_path):
    """A run dir whose manifest lists a, b, c, with an index written by the run's close."""
    run = tmp_path / "run"
    store = opened(run)
    finish(store, "a", "b", "c")
    store.close()
    return run


def test_a_run_leaves_an_index_equal_to_its_manifest(run):
    assert index_keys(run) == parsed_keys(run) == [("a", 0), ("b", 0), ("c", 0)]
    store = opened(run)
    finish(store, "d")
    store.close()
    assert index_keys(run) == parsed_keys(run) == [("a", 0), ("b", 0), ("c", 0), ("d", 0)]


def test_lines_appended_after_the_index_and_a_torn_tail_are_read_from_the_manifest(run):
    # a later run killed after two appends, the second one torn
    (run / "images" / "d.png").write_bytes(b"png")
    with open(run / "metadata.jsonl", "a") as f:
        f.write(line("d") + line("e")[:25])
    assert reopened_keys(run) == {("a", 0), ("b", 0), ("c", 0), ("d", 0)}
    assert parsed_keys(run) == index_keys(run) == [("a", 0), ("b", 0), ("c", 0), ("d", 0)]


def test_an_edited_manifest_is_never_read_through_the_stale_index(run):
    # same length, other id: only the content tells them apart
    path = run / "metadata.jsonl"
    path.write_text(line("a") + line("x") + line("c"))
    (run / "images" / "x.png").write_bytes(b"png")
    assert reopened_keys(run) == {("a", 0), ("x", 0), ("c", 0)}
    path.write_text(line("a") + line("c"))  # a line removed by hand
    assert reopened_keys(run) == {("a", 0), ("c", 0)}
    assert index_keys(run) == parsed_keys(run)


def test_the_keys_come_from_the_index_while_its_hash_matches(run):
    # a forged index with the right hash: its keys are what is read, proof the index is used
    data = (run / "metadata.jsonl").read_bytes()
    forged = [(("a", 0), "images/a.png"), (("b", 0), "images/b.png"), (("zz", 0), "images/c.png")]
    manifest_index.write(run / manifest_index.INDEX, hashlib.sha256(data).hexdigest(), len(data), forged)
    assert reopened_keys(run) == {("a", 0), ("b", 0), ("zz", 0)}


def test_a_damaged_index_is_ignored_and_replaced(run):
    (run / manifest_index.INDEX).write_bytes(b'{"version": 1, "bytes": 9')
    assert reopened_keys(run) == {("a", 0), ("b", 0), ("c", 0)}
    assert index_keys(run) == parsed_keys(run)


def test_a_malformed_line_after_the_indexed_lines_names_its_line_number(run):
    with open(run / "metadata.jsonl", "a") as f:
        f.write(line("d") + "{not json\n" + line("e"))
    with pytest.raises(RunDirError, match=r"metadata\.jsonl:5: malformed manifest line"):
        opened(run)


def test_a_missing_image_drops_its_indexed_line(run):
    os.unlink(run / "images" / "b.png")
    assert reopened_keys(run) == {("a", 0), ("c", 0)}
    assert parsed_keys(run) == index_keys(run) == [("a", 0), ("c", 0)]


def test_a_finished_run_is_found_done_without_importing_numpy_pil_or_torch(tmp_path):
    """The whole `flux-batch` process on a finished run: no model stack is imported."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"a {i}"}) + "\n" for i in "abc"))
    store = opened(tmp_path / "run")
    finish(store, "a", "b", "c")
    store.close()
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "flux_batch",
            f"dataset.path={prompts}",
            "output.dir=run",
            "runtime.progress=false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to do, all 3 items already done" in result.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "omegaconf" in imported  # the import log was read
    assert not imported & {"numpy", "PIL", "torch", "diffusers", "transformers", "gguf"}


def test_a_line_that_is_not_utf8_is_malformed_and_named(run):
    with open(run / "metadata.jsonl", "ab") as f:
        f.write(b'{"file_name": "images/d.png", "id": "d\xff", "k": 0}\n' + line("e").encode())
    with pytest.raises(RunDirError, match=r"metadata\.jsonl:4: malformed manifest line"):
        opened(run)


def test_an_unchanged_manifest_is_taken_from_the_index_without_reading_it(run, monkeypatch):
    """The index keeps the manifest's size, mtime and inode; while they hold, a start reads the
    index alone. A hand edit changes them, and the manifest is read again."""

    def not_read(*args):
        raise AssertionError("the manifest was read")

    with monkeypatch.context() as patched:
        patched.setattr(manifest_index, "read", not_read)
        assert reopened_keys(run) == {("a", 0), ("b", 0), ("c", 0)}
    with open(run / "metadata.jsonl", "a") as f:  # by hand: the index no longer describes it
        f.write(line("d"))
    (run / "images" / "d.png").write_bytes(b"png")
    assert reopened_keys(run) == {("a", 0), ("b", 0), ("c", 0), ("d", 0)}
    with monkeypatch.context() as patched:  # and the rewritten index is trusted again
        patched.setattr(manifest_index, "read", not_read)
        assert reopened_keys(run) == {("a", 0), ("b", 0), ("c", 0), ("d", 0)}

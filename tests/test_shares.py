"""Which items each rank and shard renders, and the merge of their manifest parts: every item
has exactly one owner whatever the counts, and parts merge into metadata.jsonl whole."""

from __future__ import annotations

import fcntl
import json
import random

import pytest

from flux_batch.errors import ConfigError
from flux_batch.scale.ranks import Worker
from flux_batch.store.parts import find_parts, merge_lock, merge_parts


def owners(n_items: int, num_slices: int, world: int, done: set[int]) -> dict[int, list[tuple]]:
    """item -> the (slice, rank) workers that render it, each worker planning as ranks.py does."""
    found: dict[int, list[tuple]] = {i: [] for i in range(n_items) if i not in done}
    for job_slice in range(num_slices):
        for rank in range(world):
            worker = Worker(rank=rank, world=world, job_slice=job_slice, num_slices=num_slices)
            pending = [i for i in worker.slice_items(range(n_items)) if i not in done]
            for item in worker.rank_items(pending):
                found[item].append((job_slice, rank))
    return found


@pytest.mark.parametrize("num_shards,world", [(1, 2), (1, 3), (2, 1), (3, 1), (2, 3), (1, 8), (4, 2)])
def test_every_pending_item_has_exactly_one_worker(num_shards, world):
    rng = random.Random(num_shards * 10 + world)
    for n_items in (0, 1, 5, 7, 23):
        done = {i for i in range(n_items) if rng.random() < 0.4}
        found = owners(n_items, num_shards, world, done)
        assert all(len(workers) == 1 for workers in found.values()), (n_items, found)


def test_five_items_on_two_and_three_ranks_are_shared_round_robin_in_plan_order():
    items = ["a", "b", "c", "d", "e"]
    assert [Worker(rank=r, world=2).rank_items(items) for r in range(2)] == [["a", "c", "e"], ["b", "d"]]
    assert [Worker(rank=r, world=3).rank_items(items) for r in range(3)] == [["a", "d"], ["b", "e"], ["c"]]
    # a resume: only the pending items are shared, so the ranks stay balanced
    assert [Worker(rank=r, world=2).rank_items(["b", "d", "e"]) for r in range(2)] == [["b", "e"], ["d"]]


def test_shards_own_plan_positions_whatever_is_done():
    items = list("abcdefg")
    assert [Worker(job_slice=s, num_slices=3).slice_items(items) for s in range(3)] == [
        ["a", "d", "g"],
        ["b", "e"],
        ["c", "f"],
    ]


def test_worker_from_the_launchers_environment_and_the_config():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    worker = Worker.current(2, 4, env)
    assert (worker.rank, worker.world, worker.local_rank, worker.job_slice, worker.num_slices) == (
        3,
        8,
        1,
        2,
        4,
    )
    assert worker.part == "shard-2-rank-3" and worker.label == "shard 2/4 rank 3/8"
    assert worker.device("auto", cuda_available=True) == "cuda:1"
    assert worker.device("cpu", cuda_available=True) == "cpu"
    alone = Worker.current(0, 1, {})
    assert alone.alone and alone.part is None and alone.device("auto", True) == "auto"
    assert Worker.current(0, 1, {"WORLD_SIZE": "1", "RANK": "0"}).alone


@pytest.mark.parametrize(
    "shard,num_shards,key",
    [(2, 2, "runtime.shard=2"), (-1, 2, "runtime.shard=-1"), (0, 0, "runtime.num_shards=0")],
)
def test_bad_shard_settings_are_refused_naming_the_key(shard, num_shards, key):
    with pytest.raises(ConfigError, match=key):
        Worker.current(shard, num_shards, {})


def record(item_id: str) -> bytes:
    return json.dumps({"id": item_id, "k": 0, "file_name": f"images/{item_id}.png"}).encode() + b"\n"


def test_parts_without_a_live_writer_merge_whole_lines_and_go(tmp_path):
    (tmp_path / "metadata.jsonl").write_bytes(record("a"))
    (tmp_path / "metadata.rank-0.jsonl").write_bytes(record("b") + record("c")[:9])  # torn tail
    (tmp_path / "metadata.shard-1.jsonl").write_bytes(record("d"))
    (tmp_path / "errors.shard-1.jsonl").write_bytes(b'{"id": "x", "k": 0}\n')
    (tmp_path / "metadata.shard-2-rank-1.jsonl").write_bytes(record("e"))
    with open(tmp_path / ".lock.shard-2-rank-1", "w") as live:  # a worker still appending
        fcntl.flock(live, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with merge_lock(tmp_path):
            assert merge_parts(tmp_path) == 2
    lines = (tmp_path / "metadata.jsonl").read_bytes()
    assert lines == record("a") + record("b") + record("d")
    assert (tmp_path / "errors.jsonl").read_bytes() == b'{"id": "x", "k": 0}\n'
    assert find_parts(tmp_path) == {"shard-2-rank-1"}  # the live part stays
    assert merge_parts(tmp_path, own=None) == 1  # its writer gone
    assert find_parts(tmp_path) == set()


def test_each_rank_draws_its_progress_bar_on_its_own_line_labelled():
    ranked = Worker.current(1, 2, {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "3"})
    assert ranked.progress_options() == {"desc": "shard 1/2 rank 5/8", "position": 3}
    assert Worker.current(0, 1, {"WORLD_SIZE": "1"}).progress_options() == {"desc": None, "position": 0}

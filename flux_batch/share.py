"""One worker's share of a run: the start and the end of a run across ranks and shards.

Start: rank 0 locks the run directory (exclusively; shared when sharded) and its own part,
merges every manifest part no live worker writes, reads the manifest and finds this shard's
pending items; it sends their positions to the other ranks, which lock their own parts. Each rank
then renders every world-th pending item (see ranks.py). End: the ranks wait for each other,
rank 0 merges their parts into metadata.jsonl and reports counts of all ranks. A process alone
(no ranks, no shards) does the same with no peers and appends to metadata.jsonl itself.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import FluxBatchError
from .items import Item
from .parts import merge_lock, merge_parts
from .ranks import Group, Worker
from .runinfo import check_same_run
from .store import ERRORS, RunStore


class PeerRefused(FluxBatchError):
    """Rank 0 refused the run (its message says why); the other ranks stop quietly."""

    quiet = True

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Share:
    worker: Worker
    group: Group
    store: RunStore
    todo: list[Item]  # what this worker renders
    scope: int  # items of this shard (all items when not sharded)
    pending: int  # of them not done yet, all ranks together
    previous: dict[str, Any] | None = None  # run.json as found

    def describe(self, device: str) -> str:
        """One line for `runtime.dry_run`: who renders what, where."""
        who = self.worker.label or "single process"
        span = f" ({self.todo[0].id} ... {self.todo[-1].id})" if self.todo else ""
        return (f"{self.store.dir}: {who} on {device}: {len(self.todo)} of {self.pending} pending "
                f"items{span}; {self.scope - self.pending} of {self.scope} already done")


def open_share(worker: Worker, run_dir: str | os.PathLike, items: list[Item], settings) -> Share:
    group = Group(worker)
    scope = worker.shard_items(items)
    store = RunStore(run_dir, part=worker.part)
    outcome: dict[str, Any] = {}
    if worker.leader:
        try:
            store.open(shared=worker.sharded)
            previous = store.read_run_info()
            check_same_run(previous, settings, store.dir)
            done = store.manifest.done()
            outcome = {"previous": previous,
                       "pending": [i for i, item in enumerate(scope) if item.key not in done]}
        except FluxBatchError as e:
            store.close()
            group.broadcast({"error": str(e), "exit_code": e.exit_code})
            raise
        except BaseException:
            store.close()
            raise
    outcome = group.broadcast(outcome)
    if "error" in outcome:
        raise PeerRefused(outcome["error"], outcome["exit_code"])
    if not worker.leader:
        store.open_part()
    pending = [scope[i] for i in outcome["pending"]]
    return Share(worker, group, store, worker.rank_items(pending), len(scope), len(pending),
                 outcome["previous"])


def finish(share: Share, counts: dict[str, Any]) -> dict[str, Any] | None:
    """After this worker's renders: wait for the other ranks, merge the parts, and return the
    counts of all ranks (on rank 0; None on the others). `counts` holds rendered, failed,
    render_seconds, model_loads and model_loaded."""
    store = share.store
    store.close_part()
    share.group.wait_for_all()
    everyone = share.group.gather(counts)
    if not share.worker.leader:
        return None
    if share.worker.part:
        with merge_lock(store.dir):
            merge_parts(store.dir)
            if (store.dir / ERRORS).exists():  # items retried with success leave the errors log
                store.manifest.load()
                store.prune_errors()
    return {
        "rendered": sum(c["rendered"] for c in everyone),
        "failed": sum(c["failed"] for c in everyone),
        "render_seconds": max(c["render_seconds"] for c in everyone),  # the ranks run at once
        "model_loads": sum(c["model_loads"] for c in everyone),
        "model_loaded": any(c["model_loaded"] for c in everyone),
    }

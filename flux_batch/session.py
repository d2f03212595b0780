"""A run's start and end in a run directory, for a process alone or one worker of a scale-out run.

Start (`start`): the leader (the process alone, or rank 0 of a launch) locks the run directory
(exclusively; shared when the run is split into slices) and its own manifest part, merges every
manifest part no live worker writes, reads the manifest, checks the fingerprint, repairs what a
kill or a later change left (the layout's repair) and finds its slice's pending items. In a
launch it sends their positions to the other ranks, which lock their own parts. Each rank then
renders every world-th pending item (scale/ranks.py). End (`end`): the ranks wait for each other,
the leader merges their parts into metadata.jsonl and reports the counts of all ranks. A process
alone does the same with no peers (scale/ranks.py's Group is then a no-op) and appends to
metadata.jsonl itself.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Container

from flux_batch.errors import FluxBatchError
from flux_batch.fingerprint import check_same_run
from flux_batch.plan.items import Pending, Plan
from flux_batch.scale.ranks import Group, Worker
from flux_batch.store.layouts import Layout
from flux_batch.store.layouts.flat import FLAT
from flux_batch.store.manifest import read_records
from flux_batch.store.run_dir import RunStore


class PeerRefused(FluxBatchError):
    """Rank 0 refused the run (its message says why); the other ranks stop quietly."""

    quiet = True

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Session:
    """One worker's part of a run, from its start to its end."""

    worker: Worker
    group: Group
    store: RunStore
    todo: Pending  # what this worker renders
    scope: int  # items of this slice (all items when the run is not split)
    pending: int  # of them not done yet, all ranks together
    previous: dict[str, Any] | None = None  # run.json as found

    def describe(self, device: str) -> str:
        """One line for `runtime.dry_run`: who renders what, where."""
        who = self.worker.label or "single process"
        first, last = self.todo.span()
        span = f" ({first} ... {last})" if len(self.todo) else ""
        return (
            f"{self.store.dir}: {who} on {device}: {len(self.todo)} of {self.pending} pending "
            f"items{span}; {self.scope - self.pending} of {self.scope} already done"
        )


def start(worker: Worker, run_dir: str | os.PathLike, plan: Plan, settings, layout: Layout = FLAT) -> Session:
    group = Group(worker)
    store = RunStore(run_dir, part=worker.part, layout=layout)
    outcome: dict[str, Any] = {}
    if worker.leader:
        try:
            outcome = _open_as_leader(worker, store, plan, settings)
        except FluxBatchError as e:
            store.close()
            group.broadcast({"error": str(e), "exit_code": e.exit_code})
            raise
        except BaseException:
            store.close()
            raise
    # the other ranks get the pending keys and build the same Items themselves
    sent = group.broadcast(
        {**outcome, "pending": [item.key for item in outcome["pending"]]}
        if worker.distributed and worker.leader
        else outcome
    )
    if "error" in sent:
        raise PeerRefused(sent["error"], sent["exit_code"])
    if worker.leader:
        pending = outcome["pending"]
    else:
        store.open_part()
        pending = plan.pending(skip=_AllBut(set(sent["pending"])))
    # a rank's share is a list: a launch of ranks holds its pending items (a process alone never)
    todo = Pending.of(worker.rank_items(list(pending))) if worker.distributed else pending
    return Session(worker, group, store, todo, sent["scope"], len(pending), sent["previous"])


@contextmanager
def _no_collection():
    """Python's cycle collector paused: reading a million manifest lines makes millions of
    tuples, none of them cyclic, and each collection rescans them all (a tenfold cost)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _open_as_leader(worker: Worker, store: RunStore, plan: Plan, settings) -> dict[str, Any]:
    """Lock, merge and read the run, check it is the same, repair it; what the ranks need."""
    with _no_collection():
        return _opened(worker, store, plan, settings)


def _opened(worker: Worker, store: RunStore, plan: Plan, settings) -> dict[str, Any]:
    store.open(shared=worker.sliced)
    previous = store.read_run_info()
    check_same_run(previous, settings, store.dir)
    store.repair()
    if getattr(plan, "has_inputs", False) and plan.named_inputs() and store.manifest.files:
        plan.check_inputs_unchanged(read_records(store.dir))
    scope, pending = _pending(worker, plan, store.manifest.files)  # a dict: keys tested in C
    return {"previous": previous, "scope": scope, "pending": pending}


def _pending(worker: Worker, plan: Plan, done: Container) -> tuple[int, Pending]:
    """This slice's item count and its items not done yet, in plan order; Items are built only
    for those, so a finished run costs little more than reading its files."""
    if not worker.sliced:
        return plan.total, plan.pending(skip=done)
    scope = set(worker.slice_items(plan.keys()))
    return len(scope), plan.pending(skip=_AllBut(scope, done))


class _AllBut:
    """A `skip` for Plan.items: every key but `keep`, and those in `done` too."""

    def __init__(self, keep: set, done: Container = ()):
        self.keep, self.done = keep, done

    def __contains__(self, key) -> bool:
        return key not in self.keep or key in self.done


def end(session: Session, counts: dict[str, Any]) -> dict[str, Any] | None:
    """After this worker's renders: wait for the other ranks, merge the parts, and return the
    counts of all ranks (on rank 0; None on the others). `counts` holds rendered, failed,
    render_seconds, model_loads and model_loaded."""
    store = session.store
    store.close_part()
    session.group.wait_for_all()
    everyone = session.group.gather(counts)
    if not session.worker.leader:
        return None
    if session.worker.part:
        store.merge_parts(reload=False)  # items retried with success leave the errors log
    return {
        "rendered": sum(c["rendered"] for c in everyone),
        "failed": sum(c["failed"] for c in everyone),
        "render_seconds": max(c["render_seconds"] for c in everyone),  # the ranks run at once
        "model_loads": sum(c["model_loads"] for c in everyone),
        "model_loaded": any(c["model_loaded"] for c in everyone),
    }

"""Who this process is in a scaled-out run, which items it renders, and how it talks to its peers.

Two ways to split a run, which combine:
- ranks: the processes of one `accelerate launch` / `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK in
  the environment). They start together, so they agree on the pending items after a barrier:
  rank r renders pending items r, r + W, r + 2W, ... (W ranks), in plan order.
- slices: `runtime.shard=i runtime.num_shards=n` (config keys kept from when slices were called
  shards), independent jobs (a Slurm array) that never meet and start at different times, so
  their split cannot depend on what is done: slice i owns the items at plan positions i, i + n,
  i + 2n, ...; its ranks then split its pending items.
Either way each item has exactly one owner, whatever the counts and however uneven, and the
shares change freely between a run and its resume.
"""

from __future__ import annotations

import atexit
import datetime
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TypeVar

from flux_batch.errors import ConfigError, FluxBatchError

T = TypeVar("T")

# Ranks that finish early wait for the others at the final barrier: a whole render's length.
BARRIER_TIMEOUT = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Worker:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    job_slice: int = 0  # runtime.shard
    num_slices: int = 1  # runtime.num_shards

    @classmethod
    def current(cls, job_slice: int = 0, num_slices: int = 1, environ=os.environ) -> "Worker":
        """This process: its job's slice (`runtime.shard`, `runtime.num_shards`) and its rank."""
        if not isinstance(num_slices, int) or num_slices < 1:
            raise ConfigError(f"runtime.num_shards={num_slices}: must be an integer >= 1")
        if not isinstance(job_slice, int) or not 0 <= job_slice < num_slices:
            raise ConfigError(
                f"runtime.shard={job_slice}: must be between 0 and runtime.num_shards - 1 ({num_slices - 1})"
            )
        world = int(environ.get("WORLD_SIZE", "1") or 1)
        rank = int(environ.get("RANK", "0") or 0) if world > 1 else 0
        local_rank = int(environ.get("LOCAL_RANK", rank) or 0) if world > 1 else 0
        return cls(rank, world, local_rank, job_slice, num_slices)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def sliced(self) -> bool:
        """One of several independent jobs on the run (runtime.num_shards > 1)."""
        return self.num_slices > 1

    @property
    def alone(self) -> bool:
        """The whole run in one process: it appends to metadata.jsonl itself."""
        return not self.distributed and not self.sliced

    @property
    def leader(self) -> bool:
        """Rank 0: locks the run for its launch, merges the manifest parts, prints the summary."""
        return self.rank == 0

    @property
    def part(self) -> str | None:
        """The name of this worker's manifest part (metadata.<part>.jsonl); None when alone. A
        slice's part is named `shard-<i>` on disk, as run directories made before had it."""
        names = ([f"shard-{self.job_slice}"] if self.sliced else []) + (
            [f"rank-{self.rank}"] if self.distributed else []
        )
        return "-".join(names) or None

    @property
    def slice_label(self) -> str:
        """`shard 1/4`: the slice as the user named it (runtime.shard/num_shards)."""
        return f"shard {self.job_slice}/{self.num_slices}" if self.sliced else ""

    @property
    def label(self) -> str:
        """`shard 1/4 rank 0/8`, naming what applies; empty when alone."""
        rank = f"rank {self.rank}/{self.world}" if self.distributed else ""
        return " ".join(filter(None, (self.slice_label, rank)))

    def slice_items(self, items: Iterable[T]) -> list[T]:
        """This slice's items: every num_slices-th of the plan, from position `job_slice`."""
        return list(itertools.islice(items, self.job_slice, None, self.num_slices))

    def rank_items(self, pending: Sequence[T]) -> list[T]:
        """This rank's items: every world-th pending item of its slice, from position `rank`."""
        return list(pending[self.rank :: self.world])

    def device(self, setting: str, cuda_available: bool) -> str:
        """Each rank of a launch on its own GPU: `auto` and `cuda` become cuda:LOCAL_RANK."""
        if self.distributed and cuda_available and setting in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return setting

    def pick_device(self, setting: str) -> str:
        """The device this rank renders on (`runtime.device`, made its own GPU's), made current."""
        if not self.distributed:
            return setting
        import torch

        device = self.device(setting, torch.cuda.is_available())
        if device != setting:
            torch.cuda.set_device(int(device.split(":")[1]))
        return device

    def progress_options(self) -> dict[str, Any]:
        """tqdm options: one bar per rank, on its own line, labelled with the rank (and slice)."""
        return {"desc": self.label or None, "position": self.local_rank}


class Group:
    """The ranks of one launch, for control messages only (which items, counts, a barrier): a
    gloo group over the launcher's rendezvous (MASTER_ADDR/MASTER_PORT), on CPU whatever the
    devices, so images never travel and no GPU memory goes to communication."""

    _initialized = False

    def __init__(self, worker: Worker):
        self.worker = worker
        if worker.distributed and not Group._initialized:
            import torch.distributed as dist

            if not dist.is_initialized():
                try:
                    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
                except (ValueError, RuntimeError) as e:  # e.g. WORLD_SIZE set by hand, no MASTER_ADDR
                    raise FluxBatchError(
                        f"rank {worker.rank} of {worker.world} (RANK, WORLD_SIZE) cannot reach the "
                        f"others: {str(e).splitlines()[0]}; start the ranks with accelerate launch "
                        "or torchrun"
                    ) from None
                # a process that ends with the group alive can abort in the interpreter's
                # teardown ("terminate called without an active exception", SIGABRT): gloo's
                # threads still hold work that takes the GIL. Destroying it at exit, while the
                # interpreter is whole, ends them first.
                atexit.register(_destroy_group)
            Group._initialized = True

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if not self.worker.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.worker.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.worker.world
        dist.all_gather_object(values, value)
        return values

    def wait_for_all(self, poll: float = 0.05) -> None:
        """A barrier that keeps Python signal handlers running while it waits (a blocking gloo
        call would hold off Ctrl-C and SIGTERM until the slowest rank is done)."""
        if not self.worker.distributed:
            return
        import torch.distributed as dist

        work = dist.barrier(async_op=True)
        while not work.is_completed():
            time.sleep(poll)
        work.wait()


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

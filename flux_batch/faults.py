"""Fault injection for the crash-safety tests.

`FLUX_BATCH_CRASH=<point>:<n>[:<action>][,...]` makes the n-th arrival at `<point>` (or every
arrival from the n-th on, written `<n>+`) misbehave the way real failures do:

- `kill` (the default): SIGKILL, as a preempted node or the OOM killer would.
- `stop`: SIGSTOP, so a test can hold a live process (and its lock) still.
- `ENOSPC`, `EIO`: raise that OSError, as a full or failing disk would.
- `nan`, `black`: at `pipeline_image`, replace the image with NaN or zero pixels.

At the write points (`mid_image_write`, `mid_append`, `mid_tar_write`) every action first writes half the data
and fsyncs it, leaving what a real torn write leaves. Unset (the normal case), each fault point is
one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from dataclasses import dataclass

POINTS = (
    "model_loaded",
    "input_read",  # an input image about to be read, fitted and VAE-encoded (render/references.py)
    "mid_denoise",
    "pipeline_image",
    "write_queued",
    "image_encoded",
    "mid_image_write",
    "image_written",
    "mid_append",
    "manifest_appended",
    "export_shard_written",
    # a tar shard (store/layouts/webdataset.py): half a sample written, a sample in, the shard
    # complete under its temporary name, renamed into place, listed (its index not yet written)
    "mid_tar_write",
    "sample_added",
    "shard_sealed",
    "shard_renamed",
    "shard_listed",
)
ACTIONS = ("kill", "stop", "ENOSPC", "EIO", "nan", "black")


@dataclass(frozen=True)
class Fault:
    point: str
    hit: int
    action: str = "kill"
    and_after: bool = False  # `<n>+`: every hit from the n-th on

    def matches(self, hit: int) -> bool:
        return hit >= self.hit if self.and_after else hit == self.hit


_faults: dict[str, list[Fault]] = {}
_hits: dict[str, int] = {}
_lock = threading.Lock()  # the image writer's threads reach the write points too


def configure(spec: str) -> None:
    """Arm the faults of a FLUX_BATCH_CRASH value (empty: none) and reset the hit counts."""
    _faults.clear()
    _hits.clear()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, rest = part.partition(":")
        count, _, action = rest.partition(":")
        if point not in POINTS or (action or "kill") not in ACTIONS:
            raise ValueError(f"FLUX_BATCH_CRASH: unknown fault {part!r}")
        fault = Fault(point, int(count.rstrip("+") or 1), action or "kill", count.endswith("+"))
        _faults.setdefault(point, []).append(fault)


def _due(point: str) -> str | None:
    """The action armed for this arrival at `point`, or None."""
    if point not in _faults:
        return None
    with _lock:
        hit = _hits[point] = _hits.get(point, 0) + 1
    return next((f.action for f in _faults[point] if f.matches(hit)), None)


def _act(action: str, point: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action in ("ENOSPC", "EIO"):
        code = getattr(errno, action)
        raise OSError(code, f"{os.strerror(code)} (injected at {point})")


def crash_point(point: str) -> None:
    if (action := _due(point)) is not None:
        _act(action, point)


def write(file, data: bytes, point: str) -> int | None:
    """`file.write(data)`; at an armed point, half of it, flushed to disk, then the fault."""
    if (action := _due(point)) is not None:
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        _act(action, point)
    return file.write(data)


def image(pixels, point: str = "pipeline_image"):
    """The pipeline's float image, or at an armed point a NaN or all-black one."""
    action = _due(point)
    if action == "nan":
        return pixels * float("nan")
    if action == "black":
        return pixels * 0.0
    if action is not None:
        _act(action, point)
    return pixels


def free_memory(measured: int) -> int:
    """The free memory `runtime.dequantize` counts: `FLUX_BATCH_FREE_MEMORY=<bytes>` when set,
    so a test can make any model not fit."""
    told = os.environ.get("FLUX_BATCH_FREE_MEMORY")
    return int(told) if told else measured


def step_delay() -> float:
    """Seconds each denoising step sleeps: `FLUX_BATCH_STEP_DELAY=<seconds>`, so a test sees a
    tiny model render as slowly as a large one (progress lines, stops mid-item). 0 when unset."""
    return float(os.environ.get("FLUX_BATCH_STEP_DELAY") or 0)


configure(os.environ.get("FLUX_BATCH_CRASH", ""))

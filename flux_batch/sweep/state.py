"""sweep.json: the jobs of a sweep, their swept overrides and their state.

Jobs may run in several processes at once (joblib, submitit), so every change is a
read-modify-write under an flock, and the file is replaced atomically: a reader sees the old
file or the new one, never a torn one.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from flux_batch.store.atomic import write_atomic

SWEEP_FILE = "sweep.json"
LOCK = ".sweep.lock"
DONE = "done"  # states: pending, running, done, partial (some items failed), failed, interrupted


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class SweepState:
    def __init__(self, sweep_dir: str | os.PathLike):
        self.dir = Path(sweep_dir)
        self.path = self.dir / SWEEP_FILE

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"jobs": []}
        try:
            return json.loads(self.path.read_text())
        except ValueError:
            raise ValueError(f"{self.path}: not valid JSON") from None

    @contextmanager
    def editing(self) -> Iterator[dict[str, Any]]:
        """The parsed file, written back atomically when the block ends without error."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self.read()
            yield state
            state["updated"] = now()
            write_atomic(self.path, json.dumps(state, indent=2, ensure_ascii=False).encode() + b"\n")
        finally:
            os.close(fd)  # releases the flock

    def start(
        self, jobs: list[dict[str, Any]], command: list[str], axes: dict[str, list[str]], invocation: str
    ) -> None:
        """A sweep starts: list its jobs. A job done before stays done until it runs again;
        any other (pending, or left `running` by a killed process) is pending."""
        with self.editing() as state:
            before = {job["name"]: job for job in state.get("jobs", [])}
            listed = []
            for job in jobs:
                old = before.get(job["name"], {})
                listed.append({**old, **job, "state": DONE if old.get("state") == DONE else "pending"})
            state.update(
                command=command, axes=axes, invocation=invocation, started=now(), finished=None, jobs=listed
            )

    def update_job(self, name: str, **fields: Any) -> None:
        """Set fields of job `name` (added when a sweeper did not list it up front)."""
        with self.editing() as state:
            jobs = state.setdefault("jobs", [])
            for job in jobs:
                if job["name"] == name:
                    job.update(fields, updated=now())
                    return
            jobs.append({"name": name, **fields, "updated": now()})

    def update_slice(self, name: str, job_slice: int, num_slices: int, **fields: Any) -> None:
        """Set fields of one slice of job `name` (runtime.shard of runtime.num_shards; its slices
        share the job's run directory); the job's own state and counts are those of its slices
        together. sweep.json keeps them under `shards` and `num_shards`, the config's words."""
        with self.editing() as state:
            jobs = state.setdefault("jobs", [])
            job = next((j for j in jobs if j["name"] == name), None)
            if job is None:
                job = {"name": name}
                jobs.append(job)
            for key in ("overrides", "invocation"):  # the job's, not the slice's
                if key in fields:
                    job[key] = fields.pop(key)
            slices = {k: v for k, v in job.get("shards", {}).items() if int(k) < num_slices}
            slices.setdefault(str(job_slice), {}).update(fields, updated=now())
            job.update(
                shards=slices,
                num_shards=num_slices,
                updated=now(),
                state=_slices_state([slices.get(str(i), {}).get("state") for i in range(num_slices)]),
            )
            for key in ("total", "rendered", "skipped", "failed", "model_loads"):
                job[key] = sum(s.get(key, 0) for s in slices.values())

    def finish(self) -> dict[str, Any]:
        with self.editing() as state:
            state["finished"] = now()
            return state


def _slices_state(states: list[str | None]) -> str:
    """A sliced job's state: running while a slice runs, done when every slice is."""
    for state in ("running", "failed", "interrupted", None, "pending", "partial"):
        if state in states:
            return state or "pending"
    return DONE

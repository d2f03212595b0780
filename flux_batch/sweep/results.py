"""A finished (or half-finished) sweep as data: its jobs, their swept values, their images.

Read from sweep.json when there is one, else from the job folders Hydra left (each with its
`.hydra/overrides.yaml`), so sweeps made by other versions can be compared too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux_batch.errors import FluxBatchError
from flux_batch.store.input_files import COPY
from flux_batch.store.manifest import read_records
from flux_batch.store.names import MANIFEST
from flux_batch.store.reader import RunImages
from flux_batch.sweep.state import SWEEP_FILE

EXTRACTED = "tar-images"  # copies of tar shards' images the grid and gallery show, per job


@dataclass
class Job:
    name: str
    dir: Path
    overrides: dict[str, str]
    state: str = "unknown"
    records: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    images: RunImages | None = None

    def image_path(self, key: tuple[str, int], extract_to: Path) -> Path:
        """A file of the item's image that a browser or PIL opens: its own, or for a tar
        shard's sample a copy under `extract_to/<job>/`."""
        return self.images.local_path(self.records[key]["file_name"], extract_to / self.name)


@dataclass
class SweepResults:
    dir: Path
    jobs: list[Job]
    items: list[tuple[str, int]]  # every (id, k) of any job, in order of first appearance

    def input_paths(self, key: tuple[str, int], extract_to: Path) -> list[Path | None]:
        """Files of the item's input images, as the first job that rendered it kept them (None
        for one it kept no copy of); none for an item without inputs."""
        for job in self.jobs:
            named = [i.get(COPY) for i in job.records.get(key, {}).get("inputs") or ()]
            if named:
                return [_kept(job, name, extract_to) for name in named]
        return []

    def prompt(self, key: tuple[str, int]) -> str:
        return next(job.records[key]["prompt"] for job in self.jobs if key in job.records)

    def differing(self) -> list[str]:
        """The override keys whose values are not the same in every job."""
        keys = sorted({k for job in self.jobs for k in job.overrides})
        return [k for k in keys if len({job.overrides.get(k) for job in self.jobs}) > 1]

    def job_label(self, job: Job) -> list[str]:
        """Lines naming a job by what sets it apart: `guidance=2.5`, `steps=20`."""
        lines = [f"{k.rsplit('.', 1)[-1]}={job.overrides.get(k, '-')}" for k in self.differing()]
        return lines or [job.name]


def _kept(job: Job, file_name: str | None, extract_to: Path) -> Path | None:
    if file_name is None or not job.images.exists(file_name):
        return None
    return job.images.local_path(file_name, extract_to / job.name)


def load(sweep_dir: str | Path) -> SweepResults:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FluxBatchError(f"{sweep_dir}: no such sweep folder")
    jobs = _jobs_from_file(sweep_dir) if (sweep_dir / SWEEP_FILE).exists() else _jobs_from_folders(sweep_dir)
    jobs = [job for job in jobs if (job.dir / MANIFEST).exists()]
    if not jobs:
        raise FluxBatchError(f"{sweep_dir}: no job of this sweep has rendered an image yet")
    items: dict[tuple[str, int], None] = {}
    for job in jobs:
        job.images = RunImages(job.dir)
        job.records = _records(job.dir, job.images)
        items.update(dict.fromkeys(job.records))
    return SweepResults(sweep_dir, jobs, list(items))


def _jobs_from_file(sweep_dir: Path) -> list[Job]:
    try:
        state = json.loads((sweep_dir / SWEEP_FILE).read_text())
    except ValueError as e:
        raise FluxBatchError(f"{sweep_dir / SWEEP_FILE}: not valid JSON ({e})") from None
    return [
        Job(j["name"], sweep_dir / j["name"], dict(j.get("overrides", {})), j.get("state", "unknown"))
        for j in state.get("jobs", [])
    ]


def _jobs_from_folders(sweep_dir: Path) -> list[Job]:
    import yaml

    jobs = []
    for folder in sorted(p for p in sweep_dir.iterdir() if (p / MANIFEST).exists()):
        overrides_file = folder / ".hydra" / "overrides.yaml"
        lines = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        overrides = dict(line.split("=", 1) for line in lines or [] if "=" in line)
        jobs.append(Job(folder.name, folder, overrides))
    return jobs


def _records(run_dir: Path, images: RunImages) -> dict[tuple[str, int], dict[str, Any]]:
    """The records whose image is there, the later line winning for a key written twice."""
    return {(r["id"], r["k"]): r for r in read_records(run_dir) if images.exists(r["file_name"])}

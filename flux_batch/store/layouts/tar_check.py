"""Noticing a complete tar shard that changed after it was listed (truncated, overwritten by
hand or by a failing disk), without reading a finished run's every tar at each start.

Once a tar is sealed, listed and indexed, its writer appends its size and mtime_ns to a stamp
log in the run directory (`.tar-stamps.jsonl`, `.tar-stamps.<part>.jsonl` for a scale-out run's
worker: one writer per file; hidden, and outside shards/ and index/, which make the dataset).
At each start, one stat per tar: a tar whose size and mtime_ns match one of its
stamps is as it was checked. A changed one has its members read: tar_repair.py then keeps its
whole samples, unlists the rest and stamps it again. One never stamped (a run made before stamps,
or a kill between listing and stamping) has its headers read: complete, with every listed member
there, it is stamped as it is; else it is read whole like a changed one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flux_batch.store.append_log import AppendLog

STAMPS = ".tar-stamps"


class Stamps:
    """One writer's stamp log."""

    def __init__(self, run_dir: Path, owner: str | None):
        self.path = run_dir / (f"{STAMPS}.{owner}.jsonl" if owner else f"{STAMPS}.jsonl")

    def add(self, tar: Path) -> None:
        """Stamp `tar` as checked: as it is now, it holds every sample it lists."""
        stat = os.stat(tar)
        log = AppendLog(self.path)
        try:
            log.append({"tar": tar.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        finally:
            log.close()


def compare(run_dir: Path, tars: list[str], shards: Path) -> tuple[list[str], list[str]]:
    """Of `tars` (names in the folder `shards`): those that match none of their stamps, and
    those that have none."""
    known = _read_stamps(run_dir)
    changed, unstamped = [], []
    for name in tars:
        try:
            stat = os.stat(shards / name)
        except FileNotFoundError:
            continue
        if name not in known:
            unstamped.append(name)
        elif (stat.st_size, stat.st_mtime_ns) not in known[name]:
            changed.append(name)
    return changed, unstamped


def _read_stamps(run_dir: Path) -> dict[str, set[tuple[int, int]]]:
    """{tar name: its stamps} from every writer's log; a torn or damaged line is no stamp."""
    known: dict[str, set[tuple[int, int]]] = {}
    for name in os.listdir(run_dir):
        if not (name.startswith(STAMPS + ".") and name.endswith(".jsonl")):
            continue
        for line in (run_dir / name).read_bytes().split(b"\n"):
            try:
                stamp = json.loads(line)
                known.setdefault(stamp["tar"], set()).add((stamp["size"], stamp["mtime_ns"]))
            except (ValueError, KeyError, TypeError):
                continue
    return known

"""Output layouts: where a run puts its images (flat.py, sharded.py, webdataset.py, each one
class of base.py's interface). `make_layout` is the one place a layout is picked by its name."""

from __future__ import annotations

from pathlib import Path

from flux_batch.store.layouts.base import Layout, Output
from flux_batch.store.layouts.flat import Flat
from flux_batch.store.layouts.sharded import Sharded
from flux_batch.store.layouts.webdataset import WebDataset

LAYOUTS: dict[str, type[Layout]] = {cls.name: cls for cls in (Flat, Sharded, WebDataset)}

__all__ = ["LAYOUTS", "Flat", "Layout", "Output", "Sharded", "WebDataset", "files_on_disk", "make_layout"]


def make_layout(name: str, size: int | None = None, captions: bool = False) -> Layout:
    """The layout `name` (output.layout) with `size` (output.shard_size; None: the layout's
    default) and `captions` (output.captions)."""
    cls = LAYOUTS[name]
    if cls.default_size is None:
        return cls(0, captions)
    return cls(cls.default_size if size is None else size, captions)


def files_on_disk(run_dir: Path, remove_temp: bool = False) -> set[str]:
    """What every layout finds in `run_dir` (a run's manifest names files of its own layout
    only, but it is read before the run's settings are known to match, and must not lose the
    records of another layout's files then)."""
    return set().union(*(cls.on_disk(run_dir, remove_temp) for cls in LAYOUTS.values()))

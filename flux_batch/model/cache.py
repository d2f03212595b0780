"""The pipeline a process keeps between the runs of a sweep.

Hydra's basic launcher runs a sweep's jobs one after another in one process, so a sweep over
sampler settings needs the model once. Only the last pipeline is kept (a sweep over quants or
models would otherwise hold several in memory at once); put such axes first on the command line
so that jobs sharing a model run next to each other. Prompt embeddings are kept too, by the
prompt encoder (render/encoder.py).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from flux_batch.model.files import ModelFiles
from flux_batch.model.load import LoadOptions, load_pipeline

_pipeline: tuple[tuple, Any] | None = None


_load_count = 0


def load_count() -> int:
    """How many times this process has loaded a pipeline."""
    return _load_count


def _file_stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:  # a URL
        return ()


def pipeline_key(files: ModelFiles, options: LoadOptions, device: str) -> tuple:
    """Everything that makes two jobs need different pipeline objects."""
    return (
        files.base,
        files.transformer,
        _file_stamp(files.transformer),
        options,
        device,
        files.loras,  # adapters are loaded into the pipeline: other LoRAs or scales, another one
    )


def get_pipeline(files: ModelFiles, options: LoadOptions, device: str) -> tuple[Any, bool]:
    """(pipeline, whether it was loaded now): the kept one when its key matches, else a new one."""
    global _pipeline, _load_count
    key = pipeline_key(files, options, device)
    if _pipeline is not None and _pipeline[0] == key:
        return _pipeline[1], False
    release_pipeline()
    pipe = load_pipeline(files, options, device)
    _load_count += 1
    _pipeline = (key, pipe)
    # The libraries and the model are millions of objects that are never garbage: moved out of
    # the collector's sight, a full collection during the run no longer walks them all, and
    # neither does the interpreter's at exit (about 1 s with torch, transformers and diffusers).
    gc.freeze()
    return pipe, True


def release_pipeline() -> None:
    """Drop the kept pipeline and give its memory back before another one loads."""
    global _pipeline
    if _pipeline is None:
        return
    _pipeline = None
    gc.unfreeze()  # the released pipeline's objects are garbage now
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

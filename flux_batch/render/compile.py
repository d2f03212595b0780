"""`runtime.compile=true`: torch.compile on the transformer, in place.

The module keeps its type and attributes (the pipeline reads its config and dtype), and a
pipeline kept for the next job of a sweep is compiled or not as that job asks. The first
batches of each new shape pay the compile (minutes for FLUX.1 on a GPU, long on a CPU, where a
C++ compiler is needed); dynamic shapes after the second size avoid one compile per batch size.
Compiled kernels fuse operations, so pixels may differ from eager ones within the tolerance
across batch sizes; compile is not part of the run fingerprint, like batch_size.
"""

from __future__ import annotations

import logging

log = logging.getLogger("flux_batch")

OPTIONS: dict = {}  # torch.compile keyword arguments (defaults: inductor, no fullgraph)


def apply(pipe, enabled: bool) -> None:
    transformer = pipe.transformer
    compiled = getattr(transformer, "_compiled_call_impl", None) is not None
    if enabled and not compiled:
        log.info("compiling the transformer with torch.compile %s", OPTIONS or "")
        transformer.compile(**OPTIONS)
    elif not enabled and compiled:
        transformer._compiled_call_impl = None  # back to eager, as nn.Module.compile left it

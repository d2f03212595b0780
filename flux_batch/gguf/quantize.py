"""Quantizing a FLUX transformer checkpoint into a GGUF file, tensor by tensor."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flux_batch.gguf.checkpoint import open_checkpoint, plan
from flux_batch.gguf.file import WriteStats, write_gguf
from flux_batch.gguf.inspect import size_text


@dataclass
class QuantizeResult:
    out: Path
    qtype: str
    layout: str
    stats: WriteStats

    def line(self) -> str:
        s = self.stats
        types = ", ".join(f"{t} {n}" for t, (n, _) in sorted(self.stats.types.items()))
        size = os.path.getsize(self.out)
        rate = s.values * 4 / 1e6 / s.seconds if s.seconds else 0.0
        return (
            f"{self.out}: {self.qtype}, {self.layout} layout, {sum(n for n, _ in s.types.values())} "
            f"tensors ({types}), {size_text(size)} in {s.seconds:.1f} s "
            f"({rate:.0f} MB/s of float32 weights)"
        )


def quantize_checkpoint(
    src, out, qtype: str, layout: str = "bfl", name: str | None = None, progress: bool = False
) -> QuantizeResult:
    ckpt = open_checkpoint(src)
    tensors = plan(ckpt, layout)
    metadata = {"general.name": name} if name else {}
    bar = _bar(tensors) if progress else None
    try:
        stats = write_gguf(
            out,
            tensors,
            qtype,
            metadata,
            progress=(lambda _n, done, _t: bar.update(done - bar.n)) if bar else None,
        )
    finally:
        if bar is not None:
            bar.close()
    return QuantizeResult(Path(out), qtype, layout, stats)


def _bar(tensors):
    import math

    from tqdm import tqdm

    total = sum(math.prod(t.shape) for t in tensors)
    # disable=None: shown on a terminal only, so logs and pipes get the summary line alone
    return tqdm(total=total, unit="weights", unit_scale=True, desc="quantizing", leave=False, disable=None)

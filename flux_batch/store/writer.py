"""Writing finished images: encode each with its metadata and write it atomically (in a pool of
threads, off the render path), then append its manifest record, in order (never the other way
round: see run_dir.py)."""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from flux_batch.errors import WriteError, write_failed
from flux_batch.faults import crash_point
from flux_batch.plan.items import Item
from flux_batch.samplers import infotext_sampler
from flux_batch.store.images import EXTENSIONS, encode, infotext, to_uint8
from flux_batch.store.input_files import with_copies
from flux_batch.store.layouts import Layout
from flux_batch.store.layouts.flat import FLAT
from flux_batch.store.run_dir import RunStore

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class ImageOptions:
    """What every image of a run carries besides its item: format, model names, LoRAs."""

    format: str  # png, webp or jpg
    quality: int  # jpg / webp
    model: str  # the model's config name, e.g. flux-dev
    quant: str  # the quant's config name, e.g. q8_0
    model_label: str  # the transformer file's stem, as infotext readers show it
    family: str | None = None  # model.family when not FLUX.1's (whose records stay as they were)
    family_label: str | None = None  # for infotext: "FLUX.2 [klein]"
    loras: tuple = ()  # model.lora.LoraFile
    model_sha256: str | None = None  # the transformer file's
    shift: float | None = None
    cache: dict | None = None  # the step cache's settings (render/step_cache.py), None without
    layout: Layout = FLAT  # where the images go (store/layouts/)
    infotext_extra: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        if self.family_label is not None:
            self.infotext_extra["Family"] = self.family_label
        if self.shift is not None:
            self.infotext_extra["Shift"] = f"{self.shift:g}"
        if self.cache is not None:  # "fbcache threshold=0.08"
            knobs = [f"{k}={v:g}" for k, v in self.cache.items() if k != "method"]
            self.infotext_extra["Cache"] = " ".join([self.cache["method"], *knobs])
        if self.loras:  # the short hashes LoRA-aware tools look up
            hashes = ", ".join(f"{lora.name}: {lora.sha256[:12]}" for lora in self.loras)
            weights = ", ".join(f"{lora.name}: {lora.scale:g}" for lora in self.loras)
            self.infotext_extra["Lora hashes"] = f'"{hashes}"'
            self.infotext_extra["Lora weights"] = f'"{weights}"'


class ImageWriter:
    """Encodes each finished image with its metadata and writes it atomically in a small pool of
    threads while the model renders the next batch; appends the manifest records in the order
    the images were handed in, each only once its image is on disk.

    `workers=0` does all of it on the render path, before the next batch. At most `queue` images
    wait or are being written: handing in one more waits for the oldest, which bounds memory.
    A failed write stops the run at the next hand-in or at `drain` with `write_error`'s line.
    """

    def __init__(
        self,
        store: RunStore,
        options: ImageOptions,
        workers: int = 2,
        queue: int = 8,
        on_written: Callable[[Item], None] = lambda item: None,
    ):
        self.store = store
        self.options = options
        self.loras = [lora.record() for lora in options.loras]
        self.queue = max(queue, 1)
        self.on_written = on_written  # called on the render thread, in order, once listed
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="flux-batch-writer") if workers else None
        self.pending: deque[tuple[Item, Future]] = deque()

    def record(self, item: Item) -> dict:
        """The item's manifest record (record.FIELDS, less sha256), then the row's own columns."""
        s, o = item.settings, self.options
        record = {  # a tar shard's sample: its member's name, placed in its shard when added
            "file_name": o.layout.file_name(item.index, item.file_stem, EXTENSIONS[o.format]),
            "id": item.id,
            "k": item.k,
            "prompt": item.prompt,
            "seed": item.seed,
            "width": s.width,
            "height": s.height,
            "steps": s.steps,
            "guidance": s.guidance,
            "negative_prompt": item.negative_prompt or "",
            "true_cfg": s.true_cfg,
            "scheduler": s.scheduler,
            "model": o.model,
            "quant": o.quant,
        }
        if o.family is not None:
            record["family"] = o.family
        if o.model_sha256 is not None:
            record["model_sha256"] = o.model_sha256
        if self.loras:
            record["lora"] = self.loras
        if o.cache is not None:
            record["cache"] = o.cache
        if item.inputs:  # each with where the layout keeps its copy
            record["inputs"] = [i.record() for i in item.inputs]
            record = with_copies(record, o.layout.input_file_names(item.index, item.inputs))
        return {**record, **item.extra}

    def write(self, item: Item, image: np.ndarray) -> None:
        """Hand in one image; lists every earlier image whose write has finished."""
        if self.pool is None:
            self._list(item, *self.save(item, image))
            return
        self.pending.append((item, self.pool.submit(self.save, item, image)))
        crash_point("write_queued")
        self._list_finished(wait=len(self.pending) > self.queue)

    def drain(self) -> None:
        """Wait for every image handed in and list it: after the last batch, or a stop request.
        What the layout holds half-filled (an open tar shard) is finished and listed too."""
        while self.pending:
            self._list_finished(wait=True)
        try:
            self.store.output.flush()
        except OSError as e:
            raise write_error(self.store, e) from None

    def close(self) -> None:
        """Stop the pool, waiting for writes in flight (their images are orphans, not listed:
        called after a failure, when nothing more may enter the manifest). What the layout
        holds half-filled (an open tar shard) stays for the next start to recover."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pending.clear()
        self.store.output.abandon()

    def _list_finished(self, wait: bool) -> None:
        """Append the records of the finished writes at the head of the queue (and, with
        `wait`, of the oldest at least): the manifest keeps the order images were handed in."""
        while self.pending and (wait or self.pending[0][1].done()):
            item, future = self.pending.popleft()
            self._list(item, *future.result())  # re-raises the write's error here
            wait = False

    def save(self, item: Item, image: np.ndarray) -> tuple[dict, Any]:
        """Encode one image and store it as its layout does (on a pool thread); its record,
        with its sha256, and what the layout's `list` takes."""
        o = self.options
        record = self.record(item)
        sampler = infotext_sampler(item.settings.scheduler)
        parameters = infotext(record, sampler, o.model_label, o.infotext_extra, o.model_sha256)
        data = encode(to_uint8(image), o.format, o.quality, parameters, record)
        record["sha256"] = hashlib.sha256(data).hexdigest()
        crash_point("image_encoded")
        try:
            return record, self.store.output.save(record, data, item.prompt, item.inputs)
        except OSError as e:
            raise write_error(self.store, e) from None

    def _list(self, item: Item, record: dict, saved: Any) -> None:
        """List an image its layout has stored (an image file fsynced: its manifest line; a
        sample: into this process's open tar shard, listed when the shard is complete), in order."""
        try:
            self.store.output.list(record, saved)
        except OSError as e:
            raise write_error(self.store, e) from None
        self.on_written(item)


def write_error(store: RunStore, e: OSError) -> WriteError:
    """A failed write (a full disk, a lost mount) as one line that says nothing was lost."""
    return write_failed(store.dir, e)

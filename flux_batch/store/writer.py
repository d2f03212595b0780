"""Writing one finished image: encode it with its metadata, write it atomically, then append its
manifest record (never the other way round: see run_dir.py)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flux_batch.errors import FluxBatchError
from flux_batch.faults import crash_point
from flux_batch.plan.items import Item
from flux_batch.samplers import infotext_sampler
from flux_batch.store.images import EXTENSIONS, encode, infotext, to_uint8
from flux_batch.store.layout import IMAGES
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
    loras: tuple = ()  # model.lora.LoraFile
    shift: float | None = None
    cache: dict | None = None  # the step cache's settings (render/step_cache.py), None without
    infotext_extra: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
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
    """Encodes an item's image with its metadata, writes it atomically, appends its record."""

    def __init__(self, store: RunStore, options: ImageOptions):
        self.store = store
        self.options = options
        self.loras = [lora.record() for lora in options.loras]

    def record(self, item: Item) -> dict:
        """The item's manifest record (record.FIELDS, less sha256), then the row's own columns."""
        s, o = item.settings, self.options
        record = {
            "file_name": f"{IMAGES}/{item.file_stem}{EXTENSIONS[o.format]}",
            "id": item.id, "k": item.k, "prompt": item.prompt, "seed": item.seed,
            "width": s.width, "height": s.height, "steps": s.steps, "guidance": s.guidance,
            "negative_prompt": item.negative_prompt or "", "true_cfg": s.true_cfg,
            "scheduler": s.scheduler, "model": o.model, "quant": o.quant,
        }
        if self.loras:
            record["lora"] = self.loras
        if o.cache is not None:
            record["cache"] = o.cache
        return {**record, **item.extra}

    def write(self, item: Item, image: np.ndarray) -> None:
        o = self.options
        record = self.record(item)
        sampler = infotext_sampler(item.settings.scheduler)
        parameters = infotext(record, sampler, o.model_label, o.infotext_extra)
        data = encode(to_uint8(image), o.format, o.quality, parameters, record)
        record["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            self.store.save_image(record["file_name"], data)
            crash_point("image_written")
            self.store.manifest.append(record)
            crash_point("manifest_appended")
        except OSError as e:
            raise write_error(self.store, e) from None


def write_error(store: RunStore, e: OSError) -> FluxBatchError:
    """A failed write (a full disk, a lost mount) as one line that says nothing was lost."""
    where = f" ({e.filename})" if e.filename else ""
    return FluxBatchError(
        f"cannot write to {store.dir}: {e.strerror or e}{where}; the run stopped and everything "
        "listed in the manifest is intact: fix the cause and run the same command to resume"
    )

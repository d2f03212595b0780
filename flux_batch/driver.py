"""One run: validate → plan → (load model) → render batches → write images and manifest."""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from . import faults
from .config import validate, value_of
from .errors import FluxBatchError, TooManyErrors
from .faults import crash_point
from .images import EXTENSIONS, defect, encode, infotext, to_uint8
from .items import Item, Plan, RowDefaults, Settings
from .prompts import Fields, read_rows
from .ranks import Worker, progress_options
from .runinfo import pixel_settings, run_info
from .schedulers import infotext_sampler
from .sizes import area, default_size
from .share import finish, open_share
from .store import RunStore

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("flux_batch")


class Interrupted(BaseException):
    """SIGINT/SIGTERM: the CLI exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While rendering, the first SIGINT/SIGTERM asks the current batch to stop (its images
    are dropped) and the run to end; outside rendering, or on a second signal, stop at once."""

    def __init__(self):
        self.signum: int | None = None
        self.rendering = False
        self._previous = {}

    def __enter__(self):
        # SIGUSR2: Slurm's warning before preemption or the time limit (see requeue.py)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if not self.rendering or self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        log.warning("%s: finishing the manifest and stopping (send it again to stop at once)",
                    signal.Signals(signum).name)

    def requested(self) -> bool:
        return self.signum is not None


@dataclass
class Summary:
    run_dir: Path
    total: int
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    render_seconds: float = 0.0
    model_loaded: bool = False
    model_loads: int = 0  # 1 when this run loaded the model, 0 when it reused the kept one
    shard: str = ""  # "shard 1/4": the counts are of that shard's items
    ranks: int = 1  # the counts are of all ranks of the launch
    show: bool = True  # False on ranks other than 0, whose counts rank 0 reports

    def line(self) -> str:
        where = (f", {self.shard}" if self.shard else "") + (f", {self.ranks} ranks" if self.ranks > 1 else "")
        if not self.model_loaded and not self.failed:
            return f"{self.run_dir}: nothing to do, all {self.total} items already done{where}"
        per_image = f"{self.render_seconds / self.rendered:.3f} s/image" if self.rendered else "-"
        return (
            f"{self.run_dir}: rendered {self.rendered}, skipped {self.skipped} already done, "
            f"failed {self.failed} ({per_image}, {self.total} items in the plan{where})"
        )


def dataset_path(path: str) -> Path:
    """The prompt file: as given, or for a relative path missing here, the copy shipped in the
    package (so the default prompts/example.jsonl works from any directory)."""
    given = Path(path).expanduser()
    shipped = Path(__file__).parent / given
    if not given.exists() and not given.is_absolute() and shipped.is_file():
        return shipped
    return given


def plan_run(cfg: DictConfig) -> Plan:
    """The prompt file's items (first `limit` only), checked whole, or PromptFileError."""
    d = cfg.dataset
    rows = read_rows(dataset_path(d.path), d.format, Fields(prompt=d.prompt_field, id=d.id_field))
    s = cfg.sampler
    width, height = default_size(s)
    settings = Settings(width, height, s.steps, float(s.guidance), float(s.true_cfg), s.scheduler)
    defaults = RowDefaults(settings, s.negative_prompt, area(s))
    return Plan(rows, str(d.path), defaults, cfg.seed, cfg.num_images, cfg.limit)


def plan_items(cfg: DictConfig) -> list[Item]:
    """Every item of the prompt file (first `limit` only), or PromptFileError."""
    return plan_run(cfg).items()


def run(cfg: DictConfig, run_dir: str | os.PathLike) -> Summary:
    # a signal at any point ends the run through Interrupted: exit 130 / 143, manifest whole
    with StopSignals() as stop:
        validate(cfg)
        plan = plan_run(cfg)
        settings = pixel_settings(cfg)
        worker = Worker.current(cfg)
        share = open_share(worker, run_dir, plan, settings)  # this process's items (ranks.py)
        store, todo = share.store, share.todo
        try:
            summary = Summary(store.dir, total=share.scope, skipped=share.scope - share.pending,
                              shard=worker.shard_label,
                              ranks=worker.world)
            if cfg.runtime.dry_run:
                return _dry_run(cfg, worker, share, summary)
            if todo:
                _render_all(worker.config(cfg), store, todo, settings, share.previous, summary, stop)
                if worker.alone:
                    store.prune_errors()  # items retried with success leave the errors log
            _count_all_ranks(share, summary)
            return summary
        finally:
            store.close()


def _dry_run(cfg, worker: Worker, share, summary: Summary) -> Summary:
    from .models import resolve_device

    print(share.describe(resolve_device(worker.config(cfg).runtime.device)), flush=True)
    summary.show = False
    return summary


def _count_all_ranks(share, summary: Summary) -> None:
    """Rank 0 reports the counts of every rank; the other ranks report nothing."""
    counts = finish(share, {key: getattr(summary, key) for key in (
        "rendered", "failed", "render_seconds", "model_loads", "model_loaded")})
    if counts is None:
        summary.show = False
    else:
        for key, value in counts.items():
            setattr(summary, key, value)


def _render_all(cfg, store: RunStore, todo: list[Item], settings, previous, summary: Summary,
                stop: StopSignals) -> None:
    from tqdm import tqdm

    from . import models, pipeline_cache
    from .schedule import for_run as make_schedule

    device = models.resolve_device(cfg.runtime.device)
    files = models.resolve_files(cfg)
    pipe, loaded = pipeline_cache.get_pipeline(cfg, device, files)
    summary.model_loads = int(loaded)
    summary.model_loaded = True
    crash_point("model_loaded")
    # written once the model is known to load, so a refused model leaves nothing behind
    store.write_run_info(run_info(cfg, settings, previous))
    schedule = make_schedule(cfg, pipe, files, device, todo, stop.requested)
    writer = ImageWriter(cfg, store, files.transformer, files.loras)
    progress = tqdm(total=len(todo), unit="img", disable=None if cfg.runtime.progress else True,
                    file=sys.stderr, dynamic_ncols=True, **progress_options(cfg))
    started = time.perf_counter()
    try:
        stop.rendering = True  # a signal now stops after the current batch
        for done in schedule(todo):  # one bad batch must not end a long run
            for item in done.batch if done.error is not None else []:
                _fail(cfg, store, summary, item, f"{type(done.error).__name__}: {done.error}")
            for item, image in zip(done.batch, done.images if done.images is not None else []):
                image = faults.image(image)
                if (problem := defect(image)) is None:
                    writer.write(item, image)
                    summary.rendered += 1
                else:
                    _fail(cfg, store, summary, item, problem)
                progress.update(1)
            progress.set_postfix(failed=summary.failed, refresh=False)
    finally:
        stop.rendering = False
        summary.render_seconds = time.perf_counter() - started
        progress.close()
    log.info("%s; the rest of rendering (writing, manifest) %.2f s", schedule.timing(),
             summary.render_seconds - schedule.model_seconds())
    if stop.requested():
        raise Interrupted(stop.signum)


def _fail(cfg, store: RunStore, summary: Summary, item: Item, reason: str) -> None:
    summary.failed += 1
    log.warning("%s (k=%d) failed: %s", item.id, item.k, reason)
    try:
        store.record_error({"id": item.id, "k": item.k, "line": item.line, "reason": reason,
                            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    except OSError as e:
        raise _write_error(store, e) from None
    if summary.failed > cfg.max_errors:
        raise TooManyErrors(
            f"{summary.failed} items failed (max_errors={cfg.max_errors}); see "
            f"{store.dir / 'errors.jsonl'}. The last: {item.id} (k={item.k}): {reason}"
        )


class ImageWriter:
    """Encodes an item's image with its metadata, writes it atomically, appends its record."""

    def __init__(self, cfg: DictConfig, store: RunStore, transformer_file: str, loras=()):
        self.store = store
        self.format = value_of(cfg.output.format)
        self.quality = cfg.output.quality
        self.model = cfg.model.name
        self.quant = cfg.quant.name
        self.model_label = Path(transformer_file).name.removesuffix(".gguf")
        self.loras = [lora.record() for lora in loras]
        self.infotext_extra = {}
        if cfg.sampler.shift is not None:
            self.infotext_extra["Shift"] = f"{cfg.sampler.shift:g}"
        if loras:  # the short hashes LoRA-aware tools look up
            hashes = ", ".join(f"{lora.name}: {lora.sha256[:12]}" for lora in loras)
            self.infotext_extra["Lora hashes"] = f'"{hashes}"'
            self.infotext_extra["Lora weights"] = f'"{", ".join(f"{l.name}: {l.scale:g}" for l in loras)}"'

    def record(self, item: Item) -> dict:
        s = item.settings
        record = {
            "file_name": f"images/{item.file_stem}{EXTENSIONS[self.format]}",
            "id": item.id, "k": item.k, "prompt": item.prompt, "seed": item.seed,
            "width": s.width, "height": s.height, "steps": s.steps, "guidance": s.guidance,
            "negative_prompt": item.negative_prompt or "", "true_cfg": s.true_cfg,
            "scheduler": s.scheduler, "model": self.model, "quant": self.quant,
        }
        if self.loras:
            record["lora"] = self.loras
        return {**record, **item.extra}

    def write(self, item: Item, image: np.ndarray) -> None:
        record = self.record(item)
        sampler = infotext_sampler(item.settings.scheduler)
        parameters = infotext(record, sampler, self.model_label, self.infotext_extra)
        data = encode(to_uint8(image), self.format, self.quality, parameters, record)
        record["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            self.store.save_image(record["file_name"], data)
            crash_point("image_written")
            self.store.manifest.append(record)
            crash_point("manifest_appended")
        except OSError as e:
            raise _write_error(self.store, e) from None


def _write_error(store: RunStore, e: OSError) -> FluxBatchError:
    where = f" ({e.filename})" if e.filename else ""
    return FluxBatchError(
        f"cannot write to {store.dir}: {e.strerror or e}{where}; the run stopped and everything "
        "listed in the manifest is intact: fix the cause and run the same command to resume"
    )

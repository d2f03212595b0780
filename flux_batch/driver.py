"""One run: check → plan → session start → render → store → session end.

The driver is the only stage that reads the whole config: it builds what each stage needs (the
plan, the worker, the model files and load options, the render options, the image options) and
hands those down.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig

from flux_batch import families, faults
from flux_batch import session as sessions
from flux_batch.config import FluxBatchConfig, load, output_layout, plain
from flux_batch.errors import ConfigError, TooManyErrors
from flux_batch.faults import crash_point
from flux_batch.fingerprint import cache_settings, pixel_settings, run_info
from flux_batch.model import lora
from flux_batch.model.cache import get_pipeline
from flux_batch.model.device import resolve_device
from flux_batch.model.files import ModelFiles, check_same_model, resolve_files
from flux_batch.model.load import LoadOptions
from flux_batch.plan import inputs, template
from flux_batch.plan import known as known_plan
from flux_batch.plan.items import Item, Plan, RowDefaults, Settings
from flux_batch.plan.known import KnownPlan
from flux_batch.plan.prompts import Fields, find_prompt_file, is_source, read_rows, stream_rows, streamable
from flux_batch.plan.sizes import area, default_size
from flux_batch.render.progress import StepProgress
from flux_batch.render.schedule import RenderOptions
from flux_batch.render.schedule import for_run as make_schedule
from flux_batch.scale.ranks import Worker
from flux_batch.session import Session
from flux_batch.signals import Interrupted, StopSignals
from flux_batch.store.card import write_run_card
from flux_batch.store.images import EXTENSIONS, defect
from flux_batch.store.names import ERRORS, README
from flux_batch.store.run_dir import RunStore
from flux_batch.store.writer import ImageOptions, ImageWriter, write_error

log = logging.getLogger("flux_batch")


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
    job_slice: str = ""  # "shard 1/4": the counts are of that slice's items
    ranks: int = 1  # the counts are of all ranks of the launch
    show: bool = True  # False on ranks other than 0, whose counts rank 0 reports

    def line(self) -> str:
        where = (f", {self.job_slice}" if self.job_slice else "") + (
            f", {self.ranks} ranks" if self.ranks > 1 else ""
        )
        if not self.model_loaded and not self.failed:
            return f"{self.run_dir}: nothing to do, all {self.total} items already done{where}"
        per_image = f"{self.render_seconds / self.rendered:.3f} s/image" if self.rendered else "-"
        return (
            f"{self.run_dir}: rendered {self.rendered}, skipped {self.skipped} already done, "
            f"failed {self.failed} ({per_image}, {self.total} items in the plan{where})"
        )


def plan_run(cfg: FluxBatchConfig, run_dir: str | os.PathLike | None = None) -> Plan | KnownPlan:
    """The prompt file's items (first `limit` only), checked whole, or PromptFileError. With
    `run_dir`: the keys that run kept for this very file and these settings, when it has them
    (the file is then parsed only if an item is pending). A template's slots are read (and
    checked) here, before any digest, so a missing slot file is refused whatever the run holds."""
    d = cfg.dataset
    made = template.load(d, cfg.seed) if d.template is not None else None
    prompt_file = find_prompt_file(d.path) if made is None else None

    def parse() -> Plan:
        source, rows = read_plan_rows(cfg, prompt_file, made)
        s = cfg.sampler
        width, height = default_size(s)
        settings = Settings(width, height, s.steps, float(s.guidance), float(s.true_cfg), s.scheduler)
        guided = families.get(cfg.model.family).guided_negatives(cfg.model.variant)
        defaults = RowDefaults(settings, s.negative_prompt, area(s), guided, input_aspect=s.aspect is None)
        return Plan(rows, source, defaults, cfg.seed, cfg.num_images, cfg.limit)

    # a plan with input images is parsed at every start: its inputs are hashed again, so an
    # input changed under the same name is never taken for done
    if run_dir is None or d.images is not None or (made is None and not is_source(prompt_file, d.format)):
        return parse()
    digest = known_plan.plan_digest(prompt_file, _plan_shape(cfg, made), d.format)
    keys = known_plan.load(Path(run_dir), digest)
    if keys is not None:
        return KnownPlan(keys, template.SOURCE if made else str(d.path), digest, parse)
    plan = parse()
    plan.digest = digest
    return plan


def read_plan_rows(
    cfg: FluxBatchConfig, prompt_file: Path | None, made: template.TemplateRows | None = None
) -> tuple[str, list | Callable[[], Iterator]]:
    """The rows of the prompt file (or of dataset.images' folder, or of the template `made`),
    their input images checked and hashed, and what their problems are reported against. A
    Parquet or Arrow source's rows come as a function that reads them anew at each pass."""
    d = cfg.dataset
    if made is not None:  # a template's rows name no input images
        return template.SOURCE, made.rows()
    if d.images is not None:
        source, folder = str(d.images), Path(d.images).expanduser()
        rows = inputs.folder_rows(folder, d.instruction)
    else:
        # input image paths are relative to the file's folder, or to a folder source's own
        source, folder = str(d.path), prompt_file if prompt_file.is_dir() else prompt_file.parent
        fields = Fields(d.prompt_field, d.id_field, d.image_field)
        if streamable(prompt_file, d.format, fields):  # read at each pass, never held
            return source, lambda: stream_rows(prompt_file, d.format, fields)
        rows = read_rows(prompt_file, d.format, fields)
    inputs.resolve_rows(rows, source, inputs.InputReader(folder), families.get(cfg.model.family))
    return source, rows


def _plan_shape(cfg: FluxBatchConfig, made: template.TemplateRows | None = None) -> dict[str, Any]:
    """The settings a plan's keys and checks depend on, besides the prompt file's bytes (or
    the template's, with its slots' values)."""
    shape = {
        "dataset": {
            k: getattr(cfg.dataset, k) for k in ("format", "prompt_field", "id_field", "image_field")
        },
        "sampler": asdict(cfg.sampler),
        "seed": cfg.seed,
        "num_images": cfg.num_images,
        "limit": cfg.limit,
        "layout": plain(cfg.output.layout),
        # which of guidance or true_cfg takes the negative prompt changes the plan's checks
        "guided_negatives": families.get(cfg.model.family).guided_negatives(cfg.model.variant),
    }
    return shape if made is None else {**shape, "template": made.shape()}


def plan_items(cfg: FluxBatchConfig | DictConfig) -> list[Item]:
    """Every item of the prompt file (first `limit` only), or PromptFileError."""
    return list(plan_run(load(cfg)).items())


def run(cfg: FluxBatchConfig | DictConfig, run_dir: str | os.PathLike) -> Summary:
    """check → plan → session → render → store, building each stage's objects from `cfg` here."""
    # a signal at any point ends the run through Interrupted: exit 130 / 143, manifest whole
    with StopSignals() as stop:
        cfg = load(cfg)  # the one conversion: every stage below reads the typed sections
        lora.check(cfg.lora)
        plan = plan_run(cfg, run_dir)
        settings = pixel_settings(cfg)
        worker = Worker.current(cfg.runtime.shard, cfg.runtime.num_shards)
        layout = output_layout(cfg.output)
        if layout.placed_fields:
            plan.check_free_columns(layout.placed_fields, f"output.layout={layout.name}")
        session = sessions.start(worker, run_dir, plan, settings, layout)  # this process's items
        store, todo = session.store, session.todo
        try:
            summary = Summary(
                store.dir,
                total=session.scope,
                skipped=session.scope - session.pending,
                job_slice=worker.slice_label,
                ranks=worker.world,
            )
            if cfg.runtime.dry_run:
                print(session.describe(resolve_device(worker.pick_device(cfg.runtime.device))), flush=True)
                summary.show = False
                return summary
            if todo:
                render = _render_on_ray if plain(cfg.engine.name) == "ray" else _render_all
                render(cfg, settings, worker, session, summary, stop)
                if worker.alone:
                    store.prune_errors()  # items retried with success leave the errors log
            # the next start finds its pending items without parsing the file (not before: a
            # refused model leaves nothing); a plan with inputs is always parsed
            if worker.leader and not getattr(plan, "has_inputs", False):
                known_plan.keep(store.dir, plan)
            _count_all_ranks(session, summary)
            # the card: by a lone process or a launch's first rank (a slice knows only its
            # share); also by a run that finds a finished directory without one
            if summary.show and not summary.job_slice and (todo or not (store.dir / README).exists()):
                _write_card(cfg, store, summary.skipped + summary.rendered)
            return summary
        finally:
            store.close()


def pipeline_for(
    cfg: FluxBatchConfig | DictConfig, device: str, previous: dict | None = None
) -> tuple[Any, ModelFiles, bool]:
    """(pipeline, its files, whether it was loaded now): the kept one when it matches.
    `previous`: run.json as found, whose transformer hash the file must still have."""
    cfg = load(cfg)
    files = resolve_files(cfg.model, cfg.quant, cfg.lora)
    check_same_model(previous, files)
    pipe, loaded = get_pipeline(files, load_options(cfg), device)
    return pipe, files, loaded


def load_options(cfg: FluxBatchConfig | DictConfig) -> LoadOptions:
    cfg = load(cfg)
    return LoadOptions(
        model=cfg.model.name,
        variant=cfg.model.variant,
        quant=cfg.quant.name,
        dtype=plain(cfg.runtime.dtype),
        offload=plain(cfg.runtime.offload),
        dequantize=plain(cfg.runtime.dequantize),
        family=cfg.model.family,
        encoder_device=plain(cfg.runtime.encoder_device),
    )


def render_options(cfg: FluxBatchConfig) -> RenderOptions:
    r = cfg.runtime
    return RenderOptions(
        batch_size=cfg.batch_size,
        schedule=plain(r.schedule),
        chunk_size=r.chunk_size,
        dtype=plain(r.dtype),
        max_sequence_length=cfg.sampler.max_sequence_length,
        shift=cfg.sampler.shift,
        embed_cache=r.embed_cache,
        input_fit=plain(cfg.sampler.input_fit),
        compile=r.compile,
        cache=cfg.cache,
    )


def image_options(cfg: FluxBatchConfig, files: ModelFiles) -> ImageOptions:
    return ImageOptions(
        format=plain(cfg.output.format),
        quality=cfg.output.quality,
        model=cfg.model.name,
        quant=cfg.quant.name,
        model_label=Path(files.transformer).name.removesuffix(".gguf"),
        **family_fields(cfg.model.family),
        loras=files.loras,
        model_sha256=files.transformer_sha256,
        shift=cfg.sampler.shift,
        cache=cache_settings(cfg.cache),
        layout=output_layout(cfg.output),
    )


def family_fields(name: str) -> dict:
    """The family in the records of a run of another family than FLUX.1's."""
    if name == families.DEFAULT:
        return {}
    return {"family": name, "family_label": families.get(name).label}


def _write_card(cfg: FluxBatchConfig, store: RunStore, count: int) -> None:
    write_run_card(store.dir, count, output_layout(cfg.output), EXTENSIONS[plain(cfg.output.format)])


def _count_all_ranks(session: Session, summary: Summary) -> None:
    """Rank 0 reports the counts of every rank; the other ranks report nothing."""
    counts = sessions.end(
        session,
        {
            key: getattr(summary, key)
            for key in ("rendered", "failed", "render_seconds", "model_loads", "model_loaded")
        },
    )
    if counts is None:
        summary.show = False
    else:
        for key, value in counts.items():
            setattr(summary, key, value)


def _render_all(
    cfg: FluxBatchConfig,
    settings: dict[str, Any],
    worker: Worker,
    session: Session,
    summary: Summary,
    stop: StopSignals,
) -> None:
    store, todo = session.store, session.todo
    device = resolve_device(worker.pick_device(cfg.runtime.device))
    pipe, files, loaded = pipeline_for(cfg, device, session.previous)
    summary.model_loads = int(loaded)
    summary.model_loaded = True
    crash_point("model_loaded")
    # written once the model is known to load, so a refused model leaves nothing behind
    store.write_run_info(run_info(cfg, settings, session.previous, files.record()))
    failures = Failures(store, summary, cfg.max_errors)
    progress = _progress_bar(cfg, worker, len(todo))
    steps = StepProgress(
        progress,
        todo.steps,
        cfg.runtime.progress,
        worker.label,
        failed=lambda: summary.failed,
    )
    schedule = make_schedule(pipe, files, device, todo.groups, stop.requested, render_options(cfg), steps)

    def listed(item: Item) -> None:  # an image on disk and in the manifest
        summary.rendered += 1
        progress.update(1)

    writer = ImageWriter(
        store,
        image_options(cfg, files),
        workers=cfg.runtime.writers,
        queue=cfg.runtime.write_queue,
        on_written=listed,
    )
    started = time.perf_counter()
    try:
        stop.rendering = True  # a signal now stops after the current batch
        for done in schedule(todo):  # one bad batch must not end a long run
            for item in done.batch if done.error is not None else []:
                failures.add(item, f"{type(done.error).__name__}: {done.error}")
            for item, image in zip(done.batch, done.images if done.images is not None else []):
                image = faults.image(image)
                if (problem := defect(image)) is None:
                    writer.write(item, image)  # encoded and written while the next batch renders
                else:
                    failures.add(item, problem)
                    progress.update(1)
            progress.set_postfix(failed=summary.failed, refresh=False)
        writer.drain()  # a stop request ends the loop too: what is rendered gets listed
    except TooManyErrors:
        writer.drain()  # the images rendered before the last failure still count
        raise
    finally:  # after a second signal or a failed write: stop at once, the writes in flight orphans
        writer.close()
        stop.rendering = False
        summary.render_seconds = time.perf_counter() - started
        steps.close()
        progress.close()
    log.info(
        "%s; the rest of rendering (writing, manifest) %.2f s",
        schedule.timing(),
        summary.render_seconds - schedule.model_seconds(),
    )
    if stop.requested():
        raise Interrupted(stop.signum)


def _render_on_ray(
    cfg: FluxBatchConfig,
    settings: dict[str, Any],
    worker: Worker,
    session: Session,
    summary: Summary,
    stop: StopSignals,
) -> None:
    """engine=ray: the pending items rendered by the cluster's actors (scale/ray_engine.py),
    their records committed here; run.json gains the engine and the items per node."""
    from flux_batch.scale import ray_engine

    if worker.distributed or worker.sliced:
        raise ConfigError(
            "engine=ray renders a whole run from one driver: launch it without ranks or runtime.num_shards"
        )
    store = session.store
    files = resolve_files(cfg.model, cfg.quant, cfg.lora)  # the driver's check: each actor checks its own
    check_same_model(session.previous, files)
    summary.model_loaded = True
    info = run_info(cfg, settings, session.previous, files.record())
    store.write_run_info(info)  # before the first record: a rerun compares its settings
    progress = _progress_bar(cfg, worker, len(session.todo))
    failures = Failures(store, summary, cfg.max_errors)

    def listed(item) -> None:
        summary.rendered += 1
        progress.update(1)

    started = time.perf_counter()
    try:
        job = ray_engine.Job(
            files,
            load_options(cfg),
            render_options(cfg),
            image_options(cfg, files),
            cfg.runtime.device,
            "",
            {},
            "",
        )
        engine = ray_engine.render_all(cfg, job, session, stop, failures, progress, listed)
    finally:
        summary.render_seconds = time.perf_counter() - started
        progress.close()
    store.write_run_info({**info, "engine": engine})
    for node, count in engine["items_per_node"].items():
        log.info("engine=ray: %d items rendered on node %s", count, node)
    if stop.requested():
        raise Interrupted(stop.signum)


def _progress_bar(cfg: FluxBatchConfig, worker: Worker, total: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="img",
        disable=None if cfg.runtime.progress else True,
        file=sys.stderr,
        dynamic_ncols=True,
        **worker.progress_options(),
    )


@dataclass
class Failures:
    """Failed items: each into errors.jsonl; more than `max_errors` of them end the run."""

    store: RunStore
    summary: Summary
    max_errors: int

    def add(self, item: Item, reason: str) -> None:
        self.summary.failed += 1
        log.warning("%s (k=%d) failed: %s", item.id, item.k, reason)
        try:
            self.store.record_error(
                {
                    "id": item.id,
                    "k": item.k,
                    "line": item.line,
                    "reason": reason,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
        except OSError as e:
            raise write_error(self.store, e) from None
        if self.summary.failed > self.max_errors:
            raise TooManyErrors(
                f"{self.summary.failed} items failed (max_errors={self.max_errors}); see "
                f"{self.store.dir / ERRORS}. The last: {item.id} (k={item.k}): {reason}"
            )

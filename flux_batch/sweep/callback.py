"""Hydra multirun: what sweep.json says about a sweep and its jobs.

How the names reach the jobs: the sweep callback runs first, in the process that launches the
jobs; it pins `hydra.sweep.dir` and lists the common keys in Hydra's own
`hydra.job.config.override_dirname.exclude_keys`, both as Hydra overrides, which every launcher
(basic, joblib, submitit) applies to each job's config, in whatever process the job runs. Each
job then keeps its own state in sweep.json (JobTracker).
"""

from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from flux_batch.errors import ConfigError
from flux_batch.signals import Interrupted
from flux_batch.sweep.jobs import SLICE_KEYS, job_name, parse_overrides, swept_overrides
from flux_batch.sweep.state import DONE, SweepState, now


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sweep_arguments(config: DictConfig) -> list[str]:
    """The overrides the sweeper expands: its `params` then the command line's."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    return [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)


def _expand(parsed) -> list[list[str]] | None:
    """Every job's overrides, as the basic sweeper will launch them (None: another sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        return BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:  # a range or interval sweep another sweeper understands
        return None


class SweepCallback(Callback):
    """Pins the sweep's folder and job names, keeps sweep.json, prints the sweep's summary."""

    def __init__(self) -> None:
        self.invocation = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = config.hydra
        parsed = parse_overrides(_sweep_arguments(config))
        common = {o.key_or_group for o in parsed if not o.is_sweep_override()}
        common |= set(hydra.job.config.override_dirname.exclude_keys) | SLICE_KEYS
        sweep_dir = os.path.abspath(str(hydra.sweep.dir))
        with read_write(hydra), open_dict(hydra):
            hydra.sweep.dir = sweep_dir
            hydra.job.config.override_dirname.exclude_keys = sorted(common)
            keys = ",".join(_quote(k) for k in sorted(common))
            hydra.overrides.hydra.append(f"hydra.sweep.dir={_quote(sweep_dir)}")
            hydra.overrides.hydra.append(f"hydra.job.config.override_dirname.exclude_keys=[{keys}]")
        self.invocation = f"{now()}-{os.getpid()}"
        axes = {
            o.get_key_element(): list(o.sweep_string_iterator())
            for o in parsed
            if o.is_sweep_override() and o.is_discrete_sweep()
        }
        jobs = {
            job_name(job, common): {"name": job_name(job, common), "overrides": swept_overrides(job, common)}
            for job in _expand(parsed) or []
        }  # the slices of a job are one entry
        jobs = list(jobs.values())
        SweepState(sweep_dir).start(jobs, list(hydra.overrides.task), axes, self.invocation)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        state = SweepState(config.hydra.sweep.dir).finish()
        print(summary_line(config.hydra.sweep.dir, state, self.invocation))


def summary_line(sweep_dir: str, state: dict[str, Any], invocation: str) -> str:
    jobs = state.get("jobs", [])
    ran = [job for job in jobs if job.get("invocation") == invocation]
    done = sum(job.get("state") == DONE for job in jobs)
    total = lambda key: sum(job.get(key, 0) for job in ran)  # noqa: E731
    return (
        f"{sweep_dir}: {len(jobs)} jobs, {done} done; rendered {total('rendered')}, "
        f"skipped {total('skipped')} already done, failed {total('failed')}; "
        f"model loaded {total('model_loads')} time(s)"
    )


class JobTracker:
    """One job of a multirun in sweep.json: running, then done, partial, failed or interrupted.
    Outside a multirun it does nothing."""

    def __init__(self, hydra_cfg: DictConfig | None = None):
        from hydra.types import RunMode

        cfg = hydra_cfg or HydraConfig.get()
        self.state = None
        if cfg.mode != RunMode.MULTIRUN:
            return
        self.state = SweepState(cfg.sweep.dir)
        self.name = os.path.relpath(cfg.runtime.output_dir, os.path.abspath(cfg.sweep.dir))
        exclude = set(cfg.job.config.override_dirname.exclude_keys)
        self.overrides = swept_overrides(list(cfg.overrides.task), exclude)
        self.invocation = self.state.read().get("invocation")
        given = {o.key_or_group: o.value() for o in parse_overrides(list(cfg.overrides.task))}
        self.job_slice = (int(given.get("runtime.shard", 0)), int(given.get("runtime.num_shards", 1)))

    def _update(self, **fields: Any) -> None:
        job_slice, num_slices = self.job_slice
        if num_slices > 1:
            self.state.update_slice(self.name, job_slice, num_slices, **fields)
        else:
            self.state.update_job(self.name, **fields)

    def __enter__(self) -> "JobTracker":
        if self.state:
            self._update(
                overrides=self.overrides, state="running", pid=os.getpid(), invocation=self.invocation
            )
        return self

    def refuse_output_dir(self, cfg: DictConfig) -> None:
        """In a sweep the job folder is the run directory; an output.dir would be ignored."""
        if self.state and cfg.output.dir is not None:
            raise ConfigError(
                f"output.dir={cfg.output.dir}: a sweep names each job's run "
                "directory itself; use hydra.sweep.dir=DIR to choose the sweep's folder"
            )

    def finished(self, summary) -> None:
        if self.state and summary.show:  # not the other ranks of a launch: rank 0 counts them
            self._update(
                state=DONE if not summary.failed else "partial",
                total=summary.total,
                rendered=summary.rendered,
                skipped=summary.skipped,
                failed=summary.failed,
                model_loads=summary.model_loads,
                seconds=round(summary.render_seconds, 3),
            )

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.state and exc_type is not None:
            state = "interrupted" if issubclass(exc_type, Interrupted) else "failed"
            self._update(state=state, error=str(exc).splitlines()[0][:300] if str(exc) else exc_type.__name__)

"""Hydra multirun: where a sweep and its jobs live.

A job folder is named by the job's swept overrides only (`sampler.guidance=2.5,sampler.steps=20`),
never by a job number or by settings common to all jobs, and the default sweep folder is named
by the settings common to all jobs. So the same command finds every job's run again and renders
only what is missing, and a value added to an axis renders only the new jobs.
"""

from __future__ import annotations

import hashlib

from omegaconf import DictConfig

from flux_batch.fingerprint import dataset_name, fingerprint, pixel_settings, slug

SINGLE_JOB = "single"  # the folder of a multirun that sweeps nothing


# The slices of a run (runtime.shard) share its run directory: they never name a job folder.
SLICE_KEYS = {"runtime.shard", "runtime.num_shards"}


MAX_NAME = 200


def parse_overrides(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _safe(text: str) -> str:
    """A value as a path component: '/' would nest folders."""
    return text.replace("%", "%25").replace("/", "%2F")


def job_name(job_overrides: list[str], common_keys: set[str]) -> str:
    """`key=value,...` of the swept overrides, sorted, as Hydra's override_dirname writes it."""
    parts = sorted(
        f"{o.get_key_element()}={_safe(o.get_value_element_as_str())}"
        for o in parse_overrides(job_overrides)
        if o.key_or_group not in common_keys
    )
    name = ",".join(parts) or SINGLE_JOB
    if len(name) > MAX_NAME:  # file systems cap names at 255 bytes
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[: MAX_NAME - 13]}-{digest}"
    return name


def swept_overrides(job_overrides: list[str], common_keys: set[str]) -> dict[str, str]:
    return {
        o.get_key_element(): o.get_value_element_as_str()
        for o in parse_overrides(job_overrides)
        if o.key_or_group not in common_keys
    }


def job_dir_resolver(*, _root_: DictConfig) -> str:
    """`hydra.sweep.subdir` of a job: named by its swept overrides."""
    hydra = _root_.hydra
    exclude = set(hydra.job.config.override_dirname.exclude_keys)
    return job_name(list(hydra.overrides.task), exclude)


def sweep_dir_resolver(*, _root_: DictConfig) -> str:
    """The default `hydra.sweep.dir`: multirun/<dataset>-<model>-<8 hex of the common
    settings>, from the sweep's base config, where swept values are not applied yet."""
    swept = {
        o.key_or_group for o in parse_overrides(list(_root_.hydra.overrides.task)) if o.is_sweep_override()
    }
    datasets = {"dataset", "dataset.path", "dataset.images", "dataset.template"}
    dataset = "datasets" if swept & datasets else dataset_name(_root_.dataset)
    model = "models" if "model" in swept else slug(_root_.model.name)
    return f"multirun/{dataset}-{model}-{fingerprint(pixel_settings(_root_))[:8]}"

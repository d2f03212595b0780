"""`flux-batch`: the Hydra entry point. Thin: compose config, run, report, exit status.

The one place that wires the package into Hydra: the schemas and the resolvers the YAML files
use (`${fb_run_dir:}`, …) are registered here, before Hydra composes anything."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

# Quiet the libraries' import-time chatter before they are imported.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import hydra  # noqa: E402
from hydra._internal import utils as hydra_utils  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import (
    DictConfig,  # noqa: E402
    OmegaConf,  # noqa: E402
)

from flux_batch import demo  # noqa: E402
from flux_batch.config import register_schemas  # noqa: E402
from flux_batch.demo import tiny  # noqa: E402
from flux_batch.driver import run  # noqa: E402
from flux_batch.errors import EXIT_BAD_INPUT, FluxBatchError  # noqa: E402
from flux_batch.families import DEFAULT as DEFAULT_FAMILY  # noqa: E402
from flux_batch.fingerprint import run_dir_resolver  # noqa: E402
from flux_batch.hydra_output import ConfigNotSaved, guard_config_saves  # noqa: E402
from flux_batch.refusals import refusal_line  # noqa: E402
from flux_batch.signals import Interrupted, hand_on  # noqa: E402
from flux_batch.sweep.callback import JobTracker  # noqa: E402
from flux_batch.sweep.jobs import job_dir_resolver, sweep_dir_resolver  # noqa: E402

log = logging.getLogger("flux_batch")


def register_configs() -> None:
    """Schemas into Hydra's ConfigStore, and the resolvers the YAML files use."""
    resolvers = {
        "fb_run_dir": run_dir_resolver,
        "fb_sweep_dir": sweep_dir_resolver,
        "fb_job_dir": job_dir_resolver,
        "fb_tiny_dir": lambda variant="dev", family=DEFAULT_FAMILY: str(tiny.base_dir(variant, family)),
        "fb_demo_dir": lambda: str(demo.model_dir()),
        "fb_demo_transformer": lambda gguf_type, variant="": str(demo.transformer_path(gguf_type, variant)),
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
    register_schemas()
    guard_config_saves()  # a full disk before the app starts is a failed write, not bad input


register_configs()
_started = False  # whether Hydra got as far as calling the app


def main() -> None:
    """The `flux-batch` script. A config Hydra cannot compose (unknown key, wrong type, bad
    enum value, missing group option) is one line naming the key, with exit status 2, the
    status of every other refused input, so scripts can tell bad input from a failed run."""
    try:
        with one_line_refusals():
            hydra_app()
    except SystemExit as e:
        # what Hydra reports in its own words; a full disk under .hydra/ is a failed write
        if e.code == 1 and not _started and not isinstance(e, ConfigNotSaved):
            raise SystemExit(EXIT_BAD_INPUT) from None
        raise


@contextmanager
def one_line_refusals():
    """Hydra's own error report, except for refused command lines (refusals.py). Hydra calls
    its `run_and_report` for each step (composing, running the app) and prints what fails."""
    hydras = hydra_utils.run_and_report

    def run_and_report(func):
        def refusing():
            try:
                return func()
            except Exception as e:
                line = None if os.environ.get("HYDRA_FULL_ERROR") == "1" else refusal_line(e, not _started)
                if line is None:
                    raise
                print(f"flux-batch: error: {line}", file=sys.stderr)
                raise SystemExit(EXIT_BAD_INPUT) from None

        return hydras(refusing)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = hydras


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_app(cfg: DictConfig) -> None:
    global _started
    _started = True
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        with JobTracker() as job:  # a multirun job's state in sweep.json
            job.refuse_output_dir(cfg)
            summary = run(cfg, run_dir)
            job.finished(summary)
    except FluxBatchError as e:
        if not getattr(e, "quiet", False):  # the other ranks of a launch leave it to rank 0
            print(f"flux-batch: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except Interrupted as e:
        print(f"flux-batch: stopped by {e}; run the same command to finish", file=sys.stderr)
        hand_on(e.signum)  # under submitit: checkpoint and requeue the job
        raise SystemExit(128 + e.signum) from None
    if summary.show:
        print(summary.line())


if __name__ == "__main__":
    main()

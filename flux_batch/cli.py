"""`flux-batch`: the Hydra entry point. Thin: compose config, run, report, exit status."""
from __future__ import annotations

import logging
import os
import sys

# Quiet the libraries' import-time chatter before they are imported.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from .config import register_configs  # noqa: E402
from .errors import EXIT_BAD_INPUT, FluxBatchError  # noqa: E402

log = logging.getLogger("flux_batch")

register_configs()
_started = False  # whether Hydra got as far as calling the app


def main() -> None:
    """The `flux-batch` script. Hydra reports a config it cannot compose (unknown key, wrong
    type, bad enum value: its message names the key) with exit status 1; here that becomes 2,
    the status of every other refused input, so scripts can tell bad input from a failed run."""
    try:
        hydra_app()
    except SystemExit as e:
        if e.code == 1 and not _started:
            raise SystemExit(EXIT_BAD_INPUT) from None
        raise


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_app(cfg: DictConfig) -> None:
    global _started
    _started = True
    from .driver import Interrupted, run
    from .requeue import hand_on
    from .sweeps import JobTracker

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

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
from .errors import FluxBatchError  # noqa: E402

log = logging.getLogger("flux_batch")

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from .driver import Interrupted, run
    from .sweeps import JobTracker

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        with JobTracker() as job:  # a multirun job's state in sweep.json
            job.refuse_output_dir(cfg)
            summary = run(cfg, run_dir)
            job.finished(summary)
    except FluxBatchError as e:
        print(f"flux-batch: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except Interrupted as e:
        print(f"flux-batch: stopped by {e}; run the same command to finish", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    print(summary.line())


if __name__ == "__main__":
    main()

"""Hydra writes the composed config into the run directory (`.hydra/`) before it calls the app.

A full disk there is a failed write like any later one (one line, exit 1; the same command
resumes once there is room), not a refused config: Hydra would print a traceback and exit 1,
which `cli.main` takes for a refusal of the config and turns into 2."""

from __future__ import annotations

import sys

import hydra.core.utils as hydra_utils
from hydra.core.hydra_config import HydraConfig

from flux_batch.errors import EXIT_FAILED, write_failed


class ConfigNotSaved(SystemExit):
    """Hydra composed the config but could not save it; the line is printed already. A
    SystemExit, so that Hydra's own error report (which catches Exception) lets it through."""


def guard_config_saves() -> None:
    """Wrap Hydra's `_save_config` (it writes config.yaml, hydra.yaml and overrides.yaml; run_job
    calls it by its module name) so that an OSError in it is a failed write."""
    save = hydra_utils._save_config
    if getattr(save, "guarded", False):
        return

    def save_config(cfg, filename, output_dir) -> None:
        try:
            save(cfg, filename, output_dir)
        except OSError as e:
            run_dir = HydraConfig.get().runtime.output_dir
            print(f"flux-batch: error: {write_failed(run_dir, e)}", file=sys.stderr)
            raise ConfigNotSaved(EXIT_FAILED) from None

    save_config.guarded = True
    hydra_utils._save_config = save_config

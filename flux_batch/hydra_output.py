"""Hydra writes the composed config into the run directory (`.hydra/`) before it calls the app.

A full disk there is a failed write like any later one (one line, exit 1; the same command
resumes once there is room), and a place that cannot hold a run (no permission, not a folder)
is a refused run directory (one line, exit 2), as when the run store opens it (errors.cannot_use):
left alone, Hydra would print a traceback and exit 1, which `cli.main` would take for a refusal
of the config."""

from __future__ import annotations

import sys

import hydra.core.utils as hydra_utils
from hydra.core.hydra_config import HydraConfig

from flux_batch.errors import cannot_use


class ConfigNotSaved(SystemExit):
    """Hydra composed the config but could not save it; the line is printed already, the code
    is the error's. A SystemExit, so that Hydra's own error report (which catches Exception)
    lets it through."""


def guard_config_saves() -> None:
    """Wrap Hydra's `_save_config` (it writes config.yaml, hydra.yaml and overrides.yaml; run_job
    calls it by its module name) so that an OSError in it is one line: a failed write or a
    refused run directory."""
    save = hydra_utils._save_config
    if getattr(save, "guarded", False):
        return

    def save_config(cfg, filename, output_dir) -> None:
        try:
            save(cfg, filename, output_dir)
        except OSError as e:
            error = cannot_use(HydraConfig.get().runtime.output_dir, e)
            print(f"flux-batch: error: {error}", file=sys.stderr)
            raise ConfigNotSaved(error.exit_code) from None

    save_config.guarded = True
    hydra_utils._save_config = save_config

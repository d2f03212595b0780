"""Sweeps through other Hydra launchers: the presets compose, and a submitit sweep runs its jobs
in their own processes into the same job folders and sweep.json."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module

from conftest import manifest, write_prompts
from flux_batch.cli import register_configs

PRESETS = {
    "flux_joblib": {"n_jobs": 2},
    "flux_submitit_local": {"timeout_min": 720, "gpus_per_node": 0},
    "flux_submitit_slurm": {
        "timeout_min": 720,
        "gpus_per_node": 1,
        "tasks_per_node": 1,
        "signal_delay_s": 120,
        "max_num_timeout": 10,
    },
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_launcher_presets_compose_over_the_plugins_schemas(preset):
    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.startswith("hydra_plugins.")
    assert {k: launcher[k] for k in PRESETS[preset]} == PRESETS[preset]


def test_a_two_job_sweep_through_submitit_local(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", [{"id": "fox", "prompt": "a red fox"}])
    result = cli(
        "-m",
        "hydra/launcher=flux_submitit_local",
        "sampler.steps=1,2",
        "hydra.sweep.dir=sw",
        f"dataset.path={prompts}",
        "runtime.progress=false",
    )
    sweep_dir = cli.cwd / "sw"
    assert result.stdout.strip().splitlines()[-1] == (
        f"{sweep_dir}: 2 jobs, 2 done; rendered 2, skipped 0 already done, failed 0; model loaded 2 time(s)"
    )  # one process per job: each loads its own model
    for steps in (1, 2):
        assert [(r["id"], r["steps"]) for r in manifest(sweep_dir / f"sampler.steps={steps}")] == [
            ("fox", steps)
        ]
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert [job["state"] for job in jobs] == ["done", "done"]
    assert len({job["pid"] for job in jobs}) == 2
    assert list((sweep_dir / ".submitit").iterdir())  # submitit's own job folders

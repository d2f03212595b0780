"""Schedulers and shift: chosen run-wide or per row, rendered through FluxPipeline, named in
the infotext's `Sampler:`, and part of the run fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from PIL import Image

from conftest import manifest, pixels, write_prompts
from flux_batch.cli import register_configs
from flux_batch.fingerprint import default_run_dir
from flux_batch.samplers import SCHEDULERS

LABELS = {
    "euler": "Sampler: Euler, CFG",
    "heun": "Sampler: Heun, CFG",
    "euler_karras": "Sampler: Euler, Schedule type: Karras, CFG",
    "euler_exponential": "Sampler: Euler, Schedule type: Exponential, CFG",
    "euler_beta": "Sampler: Euler, Schedule type: Beta, CFG",
}
PROMPT = "a lighthouse on a cliff"


def test_every_scheduler_renders_per_row_and_is_named_in_the_infotext(cli):
    assert set(LABELS) == set(SCHEDULERS)
    rows = [{"id": name, "prompt": PROMPT, "seed": 5, "scheduler": name} for name in SCHEDULERS]
    rows.append({"id": "default", "prompt": PROMPT, "seed": 5})
    prompts = write_prompts(cli.cwd / "p.jsonl", rows)
    cli(f"dataset.path={prompts}", "output.dir=run", "batch_size=2")
    images = pixels(cli.cwd / "run")
    records = {r["id"]: r for r in manifest(cli.cwd / "run")}
    assert np.array_equal(images[("euler", 0)], images[("default", 0)])
    for name in SCHEDULERS:
        parameters = Image.open(cli.cwd / "run" / records[name]["file_name"]).info["parameters"]
        assert LABELS[name] in parameters, parameters
        assert records[name]["scheduler"] == name
        if name != "euler":  # same seed, same prompt: only the sampler differs
            diff = np.abs(images[(name, 0)].astype(int) - images[("euler", 0)].astype(int)).max()
            assert diff > 0, name


def test_run_wide_scheduler_and_shift(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", [{"id": "a", "prompt": PROMPT}])
    cli(f"dataset.path={prompts}", "output.dir=plain")
    cli(f"dataset.path={prompts}", "output.dir=heun", "sampler.scheduler=heun", "sampler.shift=2")
    record = manifest(cli.cwd / "heun")[0]
    parameters = Image.open(cli.cwd / "heun" / record["file_name"]).info["parameters"]
    assert "Sampler: Heun," in parameters and parameters.endswith(", Shift: 2")
    diff = np.abs(
        pixels(cli.cwd / "heun")[("a", 0)].astype(int) - pixels(cli.cwd / "plain")[("a", 0)].astype(int)
    )
    assert diff.max() > 0


@pytest.fixture(scope="module")
def compose_cfg():
    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))


def test_new_sampler_settings_enter_the_fingerprint(compose_cfg):
    base = default_run_dir(compose_cfg())
    changed = [
        "sampler.scheduler=heun",
        "sampler.scheduler=euler_karras",
        "sampler.shift=2",
        "sampler.true_cfg=3",
        "sampler.aspect=16:9",
        "sampler.megapixels=0.5",
    ]
    dirs = {default_run_dir(compose_cfg(o)) for o in changed}
    assert base not in dirs and len(dirs) == len(changed)
    # an explicit euler, or true CFG without a negative prompt anywhere, renders the same
    assert default_run_dir(compose_cfg("sampler.scheduler=euler")) == base


def test_flux_heun_follows_the_dynamic_shift_flux_asks_for():
    import math

    from diffusers import FlowMatchEulerDiscreteScheduler

    from flux_batch.samplers import make_scheduler

    config = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config
    euler, heun = make_scheduler(config, "euler", None), make_scheduler(config, "heun", None)
    sigmas = np.linspace(1.0, 1 / 4, 4)
    euler.set_timesteps(sigmas=sigmas, mu=0.8)
    heun.set_timesteps(sigmas=sigmas, mu=0.8)
    # Heun visits each of Euler's sigmas twice after the first (predictor, then corrector)
    assert heun.sigmas.unique_consecutive().tolist() == pytest.approx(euler.sigmas.tolist())
    assert len(heun.timesteps) == 2 * len(sigmas) - 1
    assert euler.sigmas[1].item() == pytest.approx(math.exp(0.8) / (math.exp(0.8) + 1 / sigmas[1] - 1))
    fixed = make_scheduler(config, "heun", 2.0)
    fixed.set_timesteps(sigmas=sigmas, mu=0.8)
    assert fixed.sigmas[2].item() == pytest.approx(2 * sigmas[1] / (1 + sigmas[1]))

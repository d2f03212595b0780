"""batch_size=auto: a number that fits, and smaller batches after out-of-memory instead of a
failed run; a fixed batch size that runs out of memory fails its items as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import compose_config, pixels, write_prompts
from flux_batch.config import validate
from flux_batch.driver import pipeline_for, run
from flux_batch.errors import ConfigError
from flux_batch.render import batch_size

ROWS = [{"id": f"item{i}", "prompt": f"prompt number {i}"} for i in range(6)]


pytestmark = pytest.mark.usefixtures("hydra_config")


def config(prompts, *overrides):
    return compose_config(
        f"dataset.path={prompts}",
        "runtime.progress=false",
        "sampler.steps=1",
        "sampler.width=32",
        "sampler.height=32",
        "runtime.device=cpu",
        *overrides,
    )


@pytest.fixture
def oom_above(monkeypatch, model_cache):
    """The transformer raises torch.OutOfMemoryError for batches larger than `limit[0]`."""
    cfg = compose_config()
    pipe, _, _ = pipeline_for(cfg, "cpu")
    forward, limit, seen = pipe.transformer.forward, [8], []

    def limited(hidden_states, *args, **kwargs):
        seen.append(hidden_states.shape[0])
        if hidden_states.shape[0] > limit[0]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return forward(hidden_states, *args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", limited)
    return limit, seen


@pytest.mark.parametrize("schedule", ["phased", "per_item"])
def test_auto_falls_back_to_smaller_batches_on_out_of_memory(tmp_path, oom_above, schedule, caplog):
    limit, seen = oom_above
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    run(config(prompts, "batch_size=3", f"runtime.schedule={schedule}"), tmp_path / "b3")
    limit[0], seen[:] = 4, []
    caplog.set_level("INFO")
    summary = run(config(prompts, "batch_size=auto", f"runtime.schedule={schedule}"), tmp_path / "auto")
    assert "batch_size=auto: 8 " in caplog.text  # the CPU pick, more than the 6 items
    assert "out of memory with a batch of 6: batch_size=auto goes down to 3" in caplog.text
    assert summary.rendered == 6 and summary.failed == 0
    assert seen == [6, 3, 3]  # one step each: the failed batch of 6, then two of 3
    auto, fixed = pixels(tmp_path / "auto"), pixels(tmp_path / "b3")
    assert len(auto) == 6 and all(np.array_equal(auto[k], fixed[k]) for k in fixed)


def test_a_fixed_batch_size_fails_its_items_on_out_of_memory(tmp_path, oom_above):
    limit, seen = oom_above
    limit[0] = 2
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS[:5])
    summary = run(config(prompts, "batch_size=3", "max_errors=5"), tmp_path / "run")
    assert (summary.rendered, summary.failed) == (2, 3)
    errors = (tmp_path / "run" / "errors.jsonl").read_text()
    assert errors.count("OutOfMemoryError") == 3


def test_auto_on_a_cpu_is_bounded_by_ram(model_cache, monkeypatch):
    from flux_batch.plan.items import Settings

    cfg = compose_config()
    pipe, _, _ = pipeline_for(cfg, "cpu")
    small = [Settings(64, 64, 4, 3.5, 1.0, "euler")]
    assert batch_size.for_run("auto", pipe, small, 32, "cpu").size == batch_size.MAX_CPU
    large = [Settings(1024, 1024, 4, 3.5, 1.0, "euler")]
    per_item = batch_size.item_bytes(pipe, large[0], 32)
    monkeypatch.setattr(batch_size, "available_ram", lambda: 6 * per_item)
    assert batch_size.for_run("auto", pipe, large + small, 32, "cpu").size == 3  # half the RAM
    monkeypatch.setattr(batch_size, "available_ram", lambda: per_item)
    assert batch_size.for_run("auto", pipe, large, 32, "cpu").size == 1
    assert batch_size.for_run(4, pipe, large, 32, "cpu").size == 4


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_a_bad_batch_size_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=f"batch_size={value}: must be an integer >= 1, or auto"):
        validate(compose_config(f"batch_size={value}"))

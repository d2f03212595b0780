"""Phased and per-item schedules render the same pixels; `auto` picks phased for several
batches; runtime.compile wraps the transformer in torch.compile and unwraps it again."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FAST, PROMPTS, compose_config, manifest, pixels, write_prompts
from flux_batch.driver import run
from flux_batch.model import cache as pipeline_cache
from flux_batch.render import compile as torch_compile

ROWS = PROMPTS + [{"id": "neg", "prompt": "a lamp", "negative_prompt": "blurry", "true_cfg": 2}]


pytestmark = pytest.mark.usefixtures("hydra_config")


def config(prompts, *overrides):
    return compose_config(
        f"dataset.path={prompts}",
        "runtime.progress=false",
        "sampler.steps=2",
        "sampler.width=32",
        "sampler.height=32",
        *overrides,
    )


def test_phased_and_per_item_render_identical_pixels(tmp_path, model_cache, caplog):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    caplog.set_level("INFO", logger="flux_batch")
    run(config(prompts, "runtime.schedule=per_item", "batch_size=2"), tmp_path / "per_item")
    assert "per_item schedule, batch size 2" in caplog.text
    # chunks of 3 items: several chunks, batches that straddle no chunk, a true-CFG batch
    summary = run(
        config(prompts, "runtime.schedule=phased", "batch_size=2", "runtime.chunk_size=3"),
        tmp_path / "phased",
    )
    assert "phased schedule, batch size 2" in caplog.text
    assert summary.rendered == 9 and summary.failed == 0
    phased, per_item = pixels(tmp_path / "phased"), pixels(tmp_path / "per_item")
    assert set(phased) == set(per_item) and len(phased) == 9
    for key, image in per_item.items():
        assert np.array_equal(phased[key], image), key


def test_auto_schedule_is_phased_for_more_than_one_batch(tmp_path, model_cache, caplog):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    caplog.set_level("INFO", logger="flux_batch")
    run(config(prompts, "batch_size=2"), tmp_path / "one")
    assert "per_item schedule" in caplog.text and "phased schedule" not in caplog.text
    caplog.clear()
    run(config(prompts, "batch_size=1"), tmp_path / "two")
    assert "phased schedule" in caplog.text


def test_compile_wraps_the_transformer_and_renders_the_same_pixels(tmp_path, model_cache, monkeypatch):
    # inductor needs minutes on a CPU: the eager backend runs the same graph through dynamo
    monkeypatch.setattr(torch_compile, "OPTIONS", {"backend": "eager"})
    import torch._dynamo

    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:1])
    torch._dynamo.reset()
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    run(config(prompts, "runtime.compile=true"), tmp_path / "compiled")
    pipe = pipeline_cache._pipeline[1]
    assert pipe.transformer._compiled_call_impl is not None
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames  # dynamo traced the forward
    run(config(prompts), tmp_path / "eager")
    assert pipe.transformer._compiled_call_impl is None
    compiled, eager = pixels(tmp_path / "compiled"), pixels(tmp_path / "eager")
    assert all((compiled[k] == eager[k]).all() for k in eager)


def test_under_model_offload_phased_moves_the_transformer_once_per_chunk(tmp_path, model_cache):
    # diffusers' model CPU offload hooks work with a CPU as the execution device (moves are
    # no-ops there), so the schedules' placement calls can be counted on a CPU
    from flux_batch.driver import load_options, plan_items
    from flux_batch.model.files import resolve_files
    from flux_batch.model.load import load_pipeline
    from flux_batch.render.batch_size import BatchSizer
    from flux_batch.render.encoder import PromptEncoder
    from flux_batch.render.renderer import Renderer
    from flux_batch.render.schedule import Schedule

    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:4])
    cfg = config(prompts, "sampler.steps=1")
    pipe = load_pipeline(resolve_files(cfg.model, cfg.quant, cfg.lora), load_options(cfg), "cpu")
    pipe.enable_model_cpu_offload(device="cpu")
    moves, released = [], []  # every model sent off the accelerator; models released early
    offload_all = pipe.enable_model_cpu_offload  # what the pipeline calls after each call
    pipe.enable_model_cpu_offload = lambda *a, **k: moves.append(1) or offload_all(*a, **k)
    from accelerate.hooks import UserCpuOffloadHook

    offload_one = UserCpuOffloadHook.offload
    UserCpuOffloadHook.offload = lambda hook: released.append(hook.model) or offload_one(hook)
    items = plan_items(cfg)

    def render(phased):
        moves.clear()
        encoder = PromptEncoder(pipe, ("offload test", phased), 32)
        schedule = Schedule(Renderer(pipe, 32, lambda: False, encoder), BatchSizer(1), phased, 32)
        done = list(schedule(items))
        return {(d.batch[0].id, d.batch[0].k): d.images for d in done}, len(moves)

    try:
        per_item, per_item_moves = render(False)
        released.clear()
        phased, phased_moves = render(True)
    finally:
        UserCpuOffloadHook.offload = offload_one
    assert len(phased) == len(per_item) == len(items) == 5  # one row has num_images=2
    assert all(np.array_equal(phased[k], per_item[k]) for k in per_item)
    assert per_item_moves == 5  # every model off after each of the 5 pipeline calls
    assert phased_moves == 1  # once, after the chunk
    assert any(m is pipe.text_encoder_2 for m in released)  # T5 released before denoising
    assert "maybe_free_model_hooks" not in pipe.__dict__  # the pipeline's own behaviour is back


def test_phased_with_every_model_resident_writes_each_batch_at_once(cli):
    """Killed in the third batch's denoising, a phased run (one chunk of every item) has
    already written the first two batches: a kill loses one batch, as with per_item. (Writing
    on the render path: with the pooled writer a kill also loses the images still queued.)"""
    prompts = write_prompts(cli.cwd / "p.jsonl", [{"prompt": f"a cat {i}"} for i in range(4)])
    args = (
        f"dataset.path={prompts}",
        *FAST,
        "runtime.schedule=phased",
        "runtime.writers=0",
        "output.dir=run",
    )
    # two steps per image: the fifth step is the third batch's first
    killed = cli(*args, check=False, env={"FLUX_BATCH_CRASH": "mid_denoise:5"})
    assert killed.returncode == -9, killed.stderr
    assert len(manifest(cli.cwd / "run")) == 2
    assert "rendered 2, skipped 2 already done" in cli(*args).stdout

"""Step caching (`cache=fbcache|taylorseer`): what it records, and that an item's pixels never
depend on the batch it lands in or on the batch before it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import manifest, pixels, write_prompts

ITEMS = [  # the demo model's grammar; ids fix each item's seed whatever file holds it
    {"id": "red", "prompt": "a red circle"},
    {"id": "blue", "prompt": "a large blue triangle on the left"},
    {"id": "green", "prompt": "a small green square at the top"},
    {"id": "purple", "prompt": "a purple circle on the right"},
]


def render(cli, name: str, rows: list[dict], *overrides: str):
    write_prompts(cli.cwd / f"{name}.jsonl", rows)
    result = cli(
        f"dataset.path={name}.jsonl", f"output.dir={name}", "runtime.progress=false", *overrides, model=None
    )  # the trained demo model: caching has something to skip
    return cli.cwd / name, result


@pytest.mark.parametrize(
    "cache",
    [("cache=fbcache", "cache.threshold=0.2"), ("cache=taylorseer", "cache.interval=3")],
    ids=["fbcache", "taylorseer"],
)
def test_an_items_pixels_do_not_depend_on_its_neighbours(cli, cache):
    """The same item in batches with different neighbours, and alone: the same pixels within
    the tolerance across batch sizes. With diffusers' batch-wide First Block Cache the red
    circle below moves by more than 80/255 (test_pipeline_decides_for_each_item)."""
    one, _ = render(cli, "one", ITEMS[:3], "batch_size=3", *cache)
    two, log = render(cli, "two", [ITEMS[0], ITEMS[3]], "batch_size=2", *cache)
    alone, _ = render(cli, "alone", ITEMS[:1], "batch_size=1", *cache)
    none, _ = render(cli, "none", ITEMS[:1], "batch_size=1")
    a, b, c = (pixels(d)[("red", 0)].astype(int) for d in (one, two, alone))
    assert np.abs(a - b).max() <= 2 and np.abs(a - c).max() <= 2
    # the cache did change something: otherwise the comparison above proves nothing
    assert np.abs(c - pixels(none)[("red", 0)].astype(int)).max() > 2
    if cache[0] == "cache=fbcache":
        assert "fbcache skipped the remaining blocks in" in log.stdout + log.stderr


def test_state_is_reset_before_every_batch(cli):
    """Two items with the same prompt and seed, one batch after the other: the second starts
    from a clean cache, so both images are the same pixels."""
    rows = [
        {"id": "first", "prompt": "a red circle", "seed": 7},
        {"id": "second", "prompt": "a red circle", "seed": 7},
    ]
    run, _ = render(cli, "twice", rows, "batch_size=1", "cache=fbcache", "cache.threshold=0.2")
    images = pixels(run)
    assert np.array_equal(images[("first", 0)], images[("second", 0)])


def test_cache_settings_are_recorded_and_fingerprinted(cli):
    cached, _ = render(cli, "cached", ITEMS[:1], "cache=fbcache", "cache.threshold=0.15")
    plain, _ = render(cli, "plain", ITEMS[:1])
    [record] = manifest(cached)
    assert record["cache"] == {"method": "fbcache", "threshold": 0.15}
    assert "cache" not in manifest(plain)[0]
    info = Image.open(cached / record["file_name"]).info["parameters"]
    assert "Cache: fbcache threshold=0.15" in info
    settings = json.loads((cached / "run.json").read_text())["settings"]
    assert settings["cache"] == {"method": "fbcache", "threshold": 0.15}
    assert "cache" not in json.loads((plain / "run.json").read_text())["settings"]
    # another threshold is another run: the directory refuses it
    result = cli(
        "dataset.path=cached.jsonl",
        "output.dir=cached",
        "cache=fbcache",
        "cache.threshold=0.3",
        model=None,
        check=False,
    )
    assert result.returncode == 2
    assert "cache.threshold (0.15 -> 0.3)" in result.stderr


def test_a_sweep_over_cache_settings(cli):
    """One process, one kept pipeline: each job installs its own hooks on it (and none)."""
    write_prompts(cli.cwd / "p.jsonl", ITEMS[:2])
    cli(
        "-m",
        "dataset.path=p.jsonl",
        "cache=none,fbcache,taylorseer,none",
        "cache.threshold=0.2",
        "runtime.progress=false",
        model=None,
    )
    records = {
        d.name: manifest(d)
        for d in (cli.cwd / "multirun").glob("*/*")
        if d.is_dir() and (d / "metadata.jsonl").exists()
    }
    assert sorted(records) == ["cache=fbcache", "cache=none", "cache=taylorseer"]
    assert [r["cache"] for r in records["cache=fbcache"]] == [{"method": "fbcache", "threshold": 0.2}] * 2
    assert [r.get("cache") for r in records["cache=taylorseer"]] == [
        {"method": "taylorseer", "interval": 2, "warmup": 3, "order": 1}
    ] * 2
    assert all("cache" not in r for r in records["cache=none"])


@pytest.fixture(scope="module")
def demo_pipe():
    import torch

    from flux_batch import families

    FluxPipeline = families.get("flux1").pipeline_class()

    from flux_batch import demo
    from flux_batch.model.load import load_transformer

    base = str(demo.model_dir())
    transformer = load_transformer(str(demo.transformer_path("Q8_0")), base, torch.float32)
    pipe = FluxPipeline.from_pretrained(base, transformer=transformer, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe, items: list[dict], seeds: list[int]) -> np.ndarray:
    import torch

    return pipe(
        [i["prompt"] for i in items],
        num_inference_steps=12,
        guidance_scale=2.5,
        max_sequence_length=12,
        width=64,
        height=64,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).images


def test_pipeline_decides_for_each_item(demo_pipe):
    """At batch size 1, flux-batch's First Block Cache is diffusers' own, bit for bit; in a
    batch, diffusers' takes one decision for all items and moves an item's pixels with its
    neighbours, which is why flux-batch decides per item."""
    from diffusers import FirstBlockCacheConfig

    from flux_batch.config import CacheConfig
    from flux_batch.render import step_cache

    transformer = demo_pipe.transformer
    transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    try:
        theirs_alone = draw(demo_pipe, ITEMS[:1], [1])
        theirs_in_three = draw(demo_pipe, ITEMS[:3], [1, 2, 3])
        theirs_in_two = draw(demo_pipe, [ITEMS[0], ITEMS[3]], [1, 4])
    finally:
        transformer.disable_cache()
    step_cache.apply(transformer, CacheConfig("fbcache", threshold=0.2))
    try:
        step_cache.reset(transformer)
        ours_alone = draw(demo_pipe, ITEMS[:1], [1])
        step_cache.reset(transformer)
        ours_in_three = draw(demo_pipe, ITEMS[:3], [1, 2, 3])
        skipped = step_cache.skipped_share(transformer)
    finally:
        step_cache.remove(transformer)
    assert np.array_equal(ours_alone, theirs_alone)
    assert 255 * np.abs(theirs_in_three[0] - theirs_in_two[0]).max() > 2
    assert 255 * np.abs(ours_in_three[0] - ours_alone[0]).max() <= 2
    assert 0 < skipped < 1
    uncached = draw(demo_pipe, ITEMS[:1], [1])  # removed: back to every block at every step
    assert 255 * np.abs(uncached - ours_alone).max() > 2

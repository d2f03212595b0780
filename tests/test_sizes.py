"""Aspect ratios as an alternative to width/height, run-wide and per row; mixed sizes batch
by size."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import manifest, pixels, write_prompts
from flux_batch.plan.sizes import size_for


@pytest.mark.parametrize(
    "aspect, size",
    [
        ("1:1", (1024, 1024)),
        ("4:3", (1184, 880)),
        ("3:2", (1248, 832)),
        ("16:9", (1360, 768)),
        ("9:16", (768, 1360)),
        ("2:3", (832, 1248)),
        ("21:9", (1568, 672)),
    ],
)
def test_one_megapixel_sizes_are_multiples_of_16_close_to_the_ratio(aspect, size):
    assert size_for(aspect, 1024 * 1024) == size
    w, h = size
    a, b = map(int, aspect.split(":"))
    assert abs(w / h - a / b) / (a / b) < 0.03
    assert abs(w * h / 1024**2 - 1) < 0.03


def test_run_wide_aspect_and_megapixels(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "a wide valley"}])
    cli(f"dataset.path={prompts}", "output.dir=wide", "sampler.aspect=16:9", "sampler.megapixels=0.01")
    record = manifest(tmp_path / "wide")[0]
    assert (record["width"], record["height"]) == size_for("16:9", 0.01 * 1024**2) == (144, 80)
    assert pixels(tmp_path / "wide")[("a", 0)].shape == (80, 144, 3)


def test_mixed_aspects_per_row_batch_by_size_and_keep_their_pixels(cli, tmp_path):
    rows = [
        {"id": "square", "prompt": "a bowl of fruit"},
        {"id": "wide", "prompt": "a wide valley", "aspect": "16:9"},
        {"id": "tall", "prompt": "a tall tower", "aspect": "9:16"},
        {"id": "wide2", "prompt": "a long train", "aspect": "16:9"},
    ]
    prompts = write_prompts(tmp_path / "p.jsonl", rows)
    cli(f"dataset.path={prompts}", "output.dir=one")
    cli(f"dataset.path={prompts}", "output.dir=batched", "batch_size=4")
    sizes = {r["id"]: (r["width"], r["height"]) for r in manifest(tmp_path / "batched")}
    assert sizes == {"square": (64, 64), "wide": (80, 48), "tall": (48, 80), "wide2": (80, 48)}
    one, batched = pixels(tmp_path / "one"), pixels(tmp_path / "batched")
    for key in one:  # sizes never share a batch; the two wide rows do (within tolerance)
        assert batched[key].shape == one[key].shape
        assert np.abs(batched[key].astype(int) - one[key].astype(int)).max() <= 2
    assert np.array_equal(batched[("square", 0)], one[("square", 0)])  # alone in its batch


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampler.aspect=wide", "sampler.aspect=wide: expected an aspect ratio as W:H"),
        ("sampler.aspect=20:1", "sampler.aspect=20:1: aspect ratio 20:1 is beyond 8:1"),
        ("sampler.megapixels=0", "sampler.megapixels=0.0: must be a number > 0"),
        ("sampler.aspect=969", 'in a YAML file, quote it (aspect: "16:9")'),
    ],
)
def test_bad_aspect_settings_name_the_key(cli, override, message):
    result = cli(override, check=False)
    assert result.returncode == 2
    assert message in result.stderr

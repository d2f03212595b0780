"""The config through the real CLI: Hydra's refusals as one line, and a warning for each
setting that the chosen cache method or output layout does not read."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "override, line",
    [
        ("output.shard_size=abc", "output.shard_size=abc: expected an integer, or null"),
        ("output.layout=nope", "output.layout=nope: expected one of flat, sharded, webdataset"),
        (
            "output.nokey=1",
            "output.nokey: no such key; output has dir, format, quality, layout, shard_size, captions",
        ),
        (
            "cache=teacache",
            "cache=teacache: Could not find 'cache/teacache'; the options are fbcache, none, taylorseer",
        ),
        (
            "+runtime.fast=1",
            "runtime.fast: no such key; runtime has device, offload, dequantize, dtype, encoder_device, "
            "progress, schedule, chunk_size, embed_cache, compile, writers, write_queue, shard, num_shards, "
            "dry_run",
        ),
    ],
)
def test_a_refused_command_line_is_one_line_naming_the_key(cli, override, line):
    result = cli(override, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"flux-batch: error: {line}"]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "overrides, line",
    [
        (
            ["output.shard_size=5"],
            "output.shard_size=5 has no effect: output.layout=flat does not read it "
            "(only sharded and webdataset do)",
        ),
        (
            ["cache.threshold=0.2"],
            "cache.threshold=0.2 has no effect: cache.method=none does not read it (only fbcache does)",
        ),
        (
            ["cache=taylorseer", "cache.threshold=0.2"],
            "cache.threshold=0.2 has no effect: cache.method=taylorseer does not read it (only fbcache does)",
        ),
        (
            ["cache=fbcache", "cache.interval=3"],
            "cache.interval=3 has no effect: cache.method=fbcache does not read it (only taylorseer does)",
        ),
    ],
)
def test_a_setting_nothing_reads_is_one_warning_line(cli, overrides, line):
    result = cli(*overrides, "runtime.dry_run=true")
    warnings = [text for text in result.stderr.splitlines() if "warning" in text]
    assert warnings == [f"flux-batch: warning: {line}"]


def test_settings_that_are_read_draw_no_warning(cli):
    result = cli(
        "cache=taylorseer",
        "cache.interval=3",
        "output.layout=sharded",
        "output.shard_size=5",
        "runtime.dry_run=true",
    )
    assert "warning" not in result.stderr


def test_help_lists_every_model_preset(cli):
    from pathlib import Path

    import flux_batch

    presets = sorted(p.stem for p in (Path(flux_batch.__file__).parent / "conf" / "model").glob("*.yaml"))
    assert {"flux-kontext", "flux-krea", "tiny-kontext"} <= set(presets)
    line = next(x for x in cli("--help").stdout.splitlines() if x.startswith("model: "))
    assert [name for name in line.removeprefix("model: ").split(", ") if name != "model_schema"] == presets

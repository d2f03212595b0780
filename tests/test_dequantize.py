"""runtime.dequantize: GGUF weights dequantized once after loading give the pixels of
dequantizing at every step; `auto` decides by the memory it needs; the setting is not part of
the run's identity."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FAST, pixels, write_prompts

ROWS = [{"id": "fox", "prompt": "a red fox in the snow"}, {"id": "owl", "prompt": "an owl at night"}]


@pytest.mark.parametrize("lora", [False, True], ids=["plain", "with-lora"])
def test_once_renders_the_pixels_of_never(cli, model_cache, tmp_path, lora):
    from lora_files import low_rank_pairs, write_diffusers_lora

    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    args = [f"dataset.path={prompts}", *FAST, "batch_size=2"]
    if lora:  # adapters on the layers: their base layers are dequantized under them
        path = write_diffusers_lora(tmp_path / "l.safetensors", low_rank_pairs(model_cache, seed=1))
        args.append(f"lora=[{{path:{path},scale:0.8}}]")
    never = cli(*args, "runtime.dequantize=never", "output.dir=never")
    once = cli(*args, "runtime.dequantize=once", "output.dir=once")
    assert "dequantized" not in never.stdout
    assert "GGUF layers once (runtime.dequantize=once)" in once.stdout
    a, b = pixels(tmp_path / "never"), pixels(tmp_path / "once")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_dequantize_is_not_in_the_fingerprint(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    cli(f"dataset.path={prompts}", *FAST, "runtime.dequantize=never", "limit=1")
    again = cli(f"dataset.path={prompts}", *FAST, "runtime.dequantize=once")
    assert "rendered 1, skipped 1 already done" in again.stdout  # the same default run directory


def test_auto_dequantizes_when_it_fits_and_not_otherwise(model_cache, monkeypatch):
    import torch

    from flux_batch.demo import tiny
    from flux_batch.model import dequantize
    from flux_batch.model.load import load_transformer

    base, gguf = tiny.ensure_built("Q8_0")
    model = load_transformer(str(gguf), str(base), torch.float32)
    layers = len(dequantize.gguf_layers(model))
    assert layers > 0
    added = dequantize.added_bytes(model)
    assert added > 0
    monkeypatch.setattr(dequantize, "_free_memory", lambda device: added * 1.2 + dequantize.RESERVE + 1)
    assert dequantize.wanted("auto", model, "cpu", offloaded=False)
    assert not dequantize.wanted("auto", model, "cpu", offloaded=True)  # model offload: never
    monkeypatch.setattr(dequantize, "_free_memory", lambda device: added + dequantize.RESERVE)
    assert not dequantize.wanted("auto", model, "cpu", offloaded=False)
    assert dequantize.wanted("once", model, "cpu", offloaded=True)
    assert not dequantize.wanted("never", model, "cpu", offloaded=False)

    assert dequantize.dequantize(model) == layers
    assert dequantize.gguf_layers(model) == []
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) >= layers and all(m.weight.dtype == torch.float32 for m in linears)


def test_a_containers_memory_limit_bounds_what_auto_counts_as_free(tmp_path):
    from flux_batch.model.dequantize import _cgroup_room

    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("8589934592\n")  # an 8 GiB container
    usage.write_text("2147483648\n")
    assert _cgroup_room([(str(limit), str(usage))]) == 6 * 2**30
    limit.write_text("max\n")  # no limit set
    assert _cgroup_room([(str(limit), str(usage))]) == 2**62
    assert _cgroup_room([(str(tmp_path / "none"), str(usage))]) == 2**62


def test_once_refuses_in_one_line_when_the_weights_do_not_fit(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    result = cli(
        f"dataset.path={prompts}",
        *FAST,
        "runtime.dequantize=once",
        "output.dir=out",
        check=False,
        env={"FLUX_BATCH_FREE_MEMORY": str(2**20)},
    )  # 1 MiB free
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flux-batch: error: runtime.dequantize=once: ")
    assert "1048576 bytes (0.00 GiB) are free" in lines[0] and "auto" in lines[0] and "never" in lines[0]
    assert "dequantized" not in result.stdout  # refused before dequantizing
    assert not (tmp_path / "out" / "metadata.jsonl").exists()
    fits = cli(
        f"dataset.path={prompts}",
        *FAST,
        "runtime.dequantize=once",
        "output.dir=out",
        env={"FLUX_BATCH_FREE_MEMORY": str(2**40)},
    )
    assert "GGUF layers once (runtime.dequantize=once)" in fits.stdout

"""runtime.encoder_device=cpu: the text encoders stay in host memory and run there, the
transformer and VAE on the device (FLUX.2 [dev]'s 48 GB encoder beside a 24 GB GPU)."""

from __future__ import annotations

import numpy as np
import torch

from conftest import PROMPTS, left_behind, pixels, write_prompts


def test_encoders_on_the_cpu_render_the_same_pixels(cli):
    prompts = write_prompts(cli.cwd / "p.jsonl", PROMPTS[:3])
    common = (f"dataset.path={prompts}", "sampler.steps=2", "runtime.progress=false")
    cli(*common, "output.dir=auto")
    cli(*common, "output.dir=cpu", "runtime.encoder_device=cpu")
    auto, cpu = pixels(cli.cwd / "auto"), pixels(cli.cwd / "cpu")
    assert auto.keys() == cpu.keys() and all(np.array_equal(auto[k], cpu[k]) for k in auto)


def test_with_model_offload_it_is_refused_in_one_line(cli):
    result = cli("runtime.encoder_device=cpu", "runtime.offload=model", "output.dir=x", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "flux-batch: error: runtime.encoder_device=cpu: runtime.offload=model would move the text "
        "encoders to the GPU at each prompt; use runtime.offload=auto or none with it"
    ]
    assert left_behind(cli.cwd / "x") == []


def test_prompts_are_encoded_on_the_encoders_device_and_denoised_on_the_pipelines(model_cache):
    from flux_batch.demo import tiny
    from flux_batch.model.files import ModelFiles
    from flux_batch.model.load import LoadOptions, load_pipeline, on_encoder_device

    base, gguf = tiny.ensure_built("Q8_0")
    options = LoadOptions("tiny", "dev", "q8_0", "float32", "none", encoder_device="cpu")
    pipe = load_pipeline(ModelFiles(str(base), str(gguf)), options, "cpu")
    assert pipe.flux_batch_encoder_device == "cpu"
    pipe.flux_batch_encoder_device = "meta"  # stands for a device other than the pipeline's
    with on_encoder_device(pipe):
        assert pipe._execution_device == torch.device("meta")
    assert pipe._execution_device == torch.device("cpu")

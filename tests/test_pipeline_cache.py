"""In one process, runs that share a model reuse the loaded pipeline and the prompt embeddings,
and render exactly what diffusers renders from the prompt strings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from conftest import manifest, pixels, write_prompts
from flux_batch.cli import register_configs
from flux_batch.driver import pipeline_for, run
from flux_batch.model import cache as pipeline_cache
from flux_batch.render.encoder import PromptEncoder, encoders_identity
from flux_batch.store.images import to_uint8


@pytest.fixture(scope="module", autouse=True)
def hydra_config():
    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        yield


PROMPTS = [{"id": "fox", "prompt": "a red fox in the snow"}, {"id": "owl", "prompt": "an owl at night"}]


def test_runs_sharing_a_model_load_it_once_and_match_the_uncached_path(tmp_path, model_cache):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)

    def cfg(*overrides):
        return compose(
            config_name="config",
            overrides=[
                "model=tiny",
                f"dataset.path={prompts}",
                "runtime.progress=false",
                "sampler.steps=2",
                *overrides,
            ],
        )

    loads = pipeline_cache.load_count()
    first = run(cfg("sampler.guidance=2.5"), tmp_path / "a")
    second = run(cfg("sampler.guidance=4.0"), tmp_path / "b")
    assert (first.model_loads, second.model_loads) == (1, 0)
    assert pipeline_cache.load_count() == loads + 1
    other_quant = run(cfg("quant=q4_0"), tmp_path / "c")  # another transformer file
    assert other_quant.model_loads == 1 and pipeline_cache.load_count() == loads + 2

    # The second run took its embeddings from the cache; diffusers, given the prompt strings,
    # encodes them itself. The pixels must not differ by a single bit.
    from flux_batch.model.cache import release_pipeline

    release_pipeline()  # a pipeline of its own, loaded afresh
    pipe, _, loaded = pipeline_for(cfg("sampler.guidance=4.0"), "cpu")
    assert loaded
    cached = pixels(tmp_path / "b")
    for record in manifest(tmp_path / "b"):
        image = pipe(
            prompt=[record["prompt"]],
            width=64,
            height=64,
            num_inference_steps=2,
            guidance_scale=4.0,
            max_sequence_length=32,
            output_type="np",
            generator=[torch.Generator("cpu").manual_seed(record["seed"])],
        ).images[0]
        assert np.array_equal(to_uint8(image), cached[(record["id"], 0)])


def test_prompt_embeddings_are_encoded_once_per_prompt_and_settings(model_cache):
    cfg = compose(config_name="config", overrides=["model=tiny", "runtime.progress=false"])
    pipe, files, _ = pipeline_for(cfg, "cpu")
    identity = encoders_identity(files, pipe, "cpu", "torch.float32")
    first = PromptEncoder(pipe, identity, 32)
    batch = first(["a unique prompt for this test", "another unique prompt"])
    embeds, pooled = batch["prompt_embeds"], batch["pooled_prompt_embeds"]
    assert (first.misses, first.hits) == (2, 0)
    assert embeds.shape[:2] == (2, 32) and pooled.shape[0] == 2

    again = PromptEncoder(pipe, identity, 32)
    batch = again(["another unique prompt", "a unique prompt for this test"])
    embeds_again, pooled_again = batch["prompt_embeds"], batch["pooled_prompt_embeds"]
    assert (again.misses, again.hits) == (0, 2)
    assert torch.equal(embeds_again[0], embeds[1]) and torch.equal(pooled_again[1], pooled[0])

    longer = PromptEncoder(pipe, identity, 16)  # max_sequence_length is in the key
    assert longer(["another unique prompt"])["prompt_embeds"].shape[1] == 16 and longer.misses == 1

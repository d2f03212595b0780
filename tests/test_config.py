"""Config composition through Hydra's compose API: groups, defaults, schemas, fingerprint."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from flux_batch.cli import register_configs
from flux_batch.config import CacheConfig, CacheMethod, load, validate
from flux_batch.errors import ConfigError
from flux_batch.fingerprint import default_run_dir, pixel_settings

MODELS = ["demo", "tiny", "flux-dev", "flux-schnell"]
QUANTS = ["q8_0", "q6_k", "q5_k_s", "q4_k_s", "q4_0", "bf16", "f32"]


@pytest.fixture(scope="module", autouse=True)
def hydra_config():
    register_configs()
    with initialize_config_module(config_module="flux_batch.conf", version_base="1.3"):
        yield


def compose_cfg(*overrides: str):
    return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("quant", QUANTS)
def test_every_model_and_quant_composes_and_validates(model, quant):
    cfg = compose_cfg(f"model={model}", f"quant={quant}")
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_defaults_are_the_shipped_demo_model_and_q8_0():
    cfg = compose_cfg()
    assert (cfg.model.name, cfg.quant.name, cfg.model.builder) == ("demo", "q8_0", "demo")
    assert cfg.model.transformer.endswith("flux_batch/demo/model/transformer-Q8_0.gguf")
    assert (cfg.sampler.width, cfg.sampler.height, cfg.sampler.max_sequence_length) == (64, 64, 12)
    assert cfg.dataset.path == "prompts/example.jsonl"
    assert (cfg.seed, cfg.num_images, cfg.batch_size, cfg.limit) == (0, 1, 1, None)


@pytest.mark.parametrize(
    "model, steps, guidance, tokens, file_name",
    [
        ("flux-dev", 28, 3.5, 512, "city96/FLUX.1-dev-gguf/flux1-dev-Q5_K_S.gguf"),
        ("flux-schnell", 4, 0.0, 256, "city96/FLUX.1-schnell-gguf/flux1-schnell-Q5_K_S.gguf"),
    ],
)
def test_real_models_carry_their_defaults_and_file_names(model, steps, guidance, tokens, file_name):
    cfg = compose_cfg(f"model={model}", "quant=q5_k_s")
    assert (cfg.sampler.steps, cfg.sampler.guidance) == (steps, guidance)
    assert (cfg.sampler.max_sequence_length, cfg.sampler.width, cfg.sampler.height) == (tokens, 1024, 1024)
    assert cfg.model.transformer == file_name


def test_sampler_overrides_win_over_model_defaults():
    cfg = compose_cfg("model=flux-dev", "sampler.steps=20", "sampler.guidance=5")
    assert (cfg.sampler.steps, cfg.sampler.guidance, cfg.model.steps) == (20, 5.0, 28)


@pytest.mark.parametrize(
    "override, key",
    [
        ("sampler.stepz=3", "stepz"),
        ("model.bogus=1", "bogus"),
        ("output.format=gif", "output.format"),
        ("runtime.dtype=int8", "runtime.dtype"),
        ("sampler.steps=many", "sampler.steps"),
    ],
)
def test_schema_refuses_unknown_keys_and_bad_values(override, key):
    with pytest.raises(ConfigCompositionException) as error:
        compose_cfg(override)
    assert key in str(error.value) + str(error.value.__cause__)


def test_unknown_group_option_is_refused():
    with pytest.raises(Exception, match="quant/q9"):
        compose_cfg("quant=q9")


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampler.width=100", "sampler.width=100: image sizes must be positive multiples of 16"),
        ("sampler.height=0", "sampler.height=0"),
        ("sampler.steps=0", "sampler.steps=0"),
        ("sampler.guidance=nan", "sampler.guidance=nan"),
        ("num_images=0", "num_images=0"),
        ("batch_size=0", "batch_size=0"),
        ("dataset.format=xml", "dataset.format=xml"),
        ("runtime.device=gpu", "runtime.device=gpu"),
        ("runtime.offload=sequential", "KeyError: None"),
    ],
)
def test_validation_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(compose_cfg(override))


def test_fingerprint_ignores_settings_that_do_not_change_pixels():
    base = default_run_dir(compose_cfg())
    for override in [
        "batch_size=4",
        "limit=2",
        "runtime.offload=none",
        "runtime.device=cpu",
        "runtime.progress=false",
        "max_errors=10",
        "num_images=2",
    ]:
        assert default_run_dir(compose_cfg(override)) == base, override


def test_fingerprint_follows_settings_that_change_pixels():
    base = default_run_dir(compose_cfg())
    changed = [
        "seed=1",
        "sampler.steps=5",
        "sampler.guidance=2",
        "sampler.width=32",
        "sampler.max_sequence_length=16",
        "quant=q4_0",
        "runtime.dtype=bfloat16",
        "output.format=webp",
    ]
    dirs = {default_run_dir(compose_cfg(o)) for o in changed}
    assert base not in dirs and len(dirs) == len(changed)


def test_default_run_dir_names_dataset_model_and_quant():
    cfg = compose_cfg("dataset.path=data/My Prompts.tsv", "quant=q4_0")
    assert default_run_dir(cfg).startswith("outputs/My-Prompts-demo-q4_0-")


def test_pixel_settings_identify_local_files_by_name_and_size(tmp_path):
    gguf = tmp_path / "flux1-dev-Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(12))
    cfg = compose_cfg("model=flux-dev", f"model.transformer={gguf}", f"model.base={tmp_path}")
    identity = pixel_settings(cfg)["model"]
    assert identity["transformer"] == {"name": "flux1-dev-Q8_0.gguf", "size": 16}


def test_the_typed_config_is_built_once_and_read_only():
    cfg = load(compose_cfg("cache=fbcache", "sampler.steps=5"))
    assert isinstance(cfg.cache, CacheConfig) and cfg.cache.method == CacheMethod.fbcache
    assert (cfg.sampler.steps, cfg.cache.threshold) == (5, 0.08)  # the schema's default, held once
    assert load(cfg) is cfg
    with pytest.raises(FrozenInstanceError):
        cfg.sampler.steps = 3


def test_model_family_defaults_to_flux1_and_enters_the_fingerprint_only_when_another():
    assert load(compose_cfg()).model.family == "flux1"
    assert default_run_dir(compose_cfg("model.family=flux1")) == default_run_dir(compose_cfg())
    assert default_run_dir(compose_cfg("model.family=chroma")) != default_run_dir(compose_cfg())
    with pytest.raises(ConfigError, match="model.family=: must name a model family"):
        load(compose_cfg("model.family="))


def test_a_key_added_with_plus_is_refused_naming_it():
    with pytest.raises(ConfigError, match="^output.x: no such key; output has dir, format"):
        load(compose_cfg("+output.x=1"))

"""The run fingerprint pinned: run-directory names and full fingerprints of composed configs.

Runs made before a change to the config code must find their directories again, so these
values are hard-coded from the code as it was; a change that moves one breaks every resume.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from flux_batch.config import load
from flux_batch.fingerprint import default_run_dir, fingerprint, pixel_settings, run_info
from test_config import compose_cfg, hydra_config  # noqa: F401  (its module-wide Hydra)

PINNED = [
    (
        (),
        "outputs/example-demo-q8_0-42fbbf8a",
        "42fbbf8a0f290d3241336a397449191602bb323b16f56121e9d1275920f5d17f",
    ),
    (
        ("model=tiny",),
        "outputs/example-tiny-q8_0-5ffc64b5",
        "5ffc64b5a4371fd048ebbb532caeb44705db30f44fd87e37f929431da74d1582",
    ),
    (
        ("model=flux-dev", "quant=q4_0"),
        "outputs/example-flux-dev-q4_0-c2e7c779",
        "c2e7c779e4e7a6036667bfa05441283252d5ae9dc981261ea751229312dc15b1",
    ),
    (
        ("cache=taylorseer", "cache.interval=3"),
        "outputs/example-demo-q8_0-247ed2cb",
        "247ed2cbc9b5e3f844ff2392984ab1a8f6f39a20f13a5b73c71fad31a2eb5896",
    ),
    (
        ("cache=fbcache", "cache.threshold=0.12"),
        "outputs/example-demo-q8_0-d49e7bb7",
        "d49e7bb787011f2f50c982014d2643c3a0ede5fa255f7ae8416be0e4fb96dc91",
    ),
    (
        ("output.layout=sharded",),
        "outputs/example-demo-q8_0-2792241d",
        "2792241d44c678acf0f1c6164e11e6ad8f0d44357a0244c8cef7cab29932b27f",
    ),
    (
        ("output.layout=webdataset", "output.shard_size=50"),
        "outputs/example-demo-q8_0-34658f83",
        "34658f8322f4bb704ec3450a3055fc7da51e2a0e5b0f166f137ac4c8eb2d310b",
    ),
    (
        ("output.captions=true",),
        "outputs/example-demo-q8_0-54933a75",
        "54933a758d89d8593f42472d1667838ad8555963013d9ff23bd707e4a279e1b3",
    ),
    (
        ("output.format=jpg",),
        "outputs/example-demo-q8_0-44c17d55",
        "44c17d554a6756e93396a5f2be2197ba914aaa489814637a3b6a3f9d94eeecfc",
    ),
    (
        ("output.format=webp", "output.quality=80"),
        "outputs/example-demo-q8_0-76fe8c07",
        "76fe8c0776537e390f8af2fa5656508dcb04c5dafe4fc1f78b24602301509b86",
    ),
    (
        ("sampler.aspect=16:9", "sampler.megapixels=0.5"),
        "outputs/example-demo-q8_0-7880ee4d",
        "7880ee4d3c67420c08fe253cff576a33680b58e3db6d578e72d802d31b9e4ff5",
    ),
    (
        ("sampler.true_cfg=4", "sampler.negative_prompt=blurry"),
        "outputs/example-demo-q8_0-c7a4b538",
        "c7a4b53884b9a90a1e29c048dc0a19b02da73c98a821e9cdb2d8a7282c2ae6e8",
    ),
    (
        ("sampler.shift=2.5", "sampler.scheduler=heun"),
        "outputs/example-demo-q8_0-51054826",
        "5105482648fa4655f0df8340ac0031fc3b802fe81f4df79bc675bb33ddbc4d02",
    ),
    (
        ("lora=[{path:someone/styles/style.safetensors,scale:0.8}]",),
        "outputs/example-demo-q8_0-8e762684",
        "8e762684c82783e9eee19f376c04aa04bdbc645c97358fe396e0301ac812b181",
    ),
    (
        ("seed=7",),
        "outputs/example-demo-q8_0-67abaefc",
        "67abaefcb23bf98395055f12241efd11d7c02b796acddec7c820d4a0f582a0cf",
    ),
    (
        ("runtime.dtype=bfloat16",),
        "outputs/example-demo-q8_0-8b2dc1cd",
        "8b2dc1cd3fbd27b93aa9ab59c78cbd86880c9160b40ea541d7544bd448a65f32",
    ),
    (
        ("sampler.megapixels=1",),
        "outputs/example-demo-q8_0-935937bd",
        "935937bdcb96a61fabe23d4baad2e5de4f8ec1b661ce283b1ca0911457496fd4",
    ),
    (
        ("sampler.true_cfg=4",),
        "outputs/example-demo-q8_0-2ee768ba",
        "2ee768baaddc42bb368521a8aa8525b16797bd0f8b657da4dcd50476150d546b",
    ),
    (
        (
            "model=flux-schnell",
            "quant=q5_k_s",
            "cache=fbcache",
            "output.layout=sharded",
            "output.shard_size=100",
            "output.format=jpg",
            "seed=7",
            "sampler.aspect=3:2",
        ),
        "outputs/example-flux-schnell-q5_k_s-af9e83fa",
        "af9e83facc6430f712c692c686497ae4d0415e7410b9358e57098a0200a59a8a",
    ),
]


@pytest.mark.parametrize(
    "overrides, run_dir, digest", PINNED, ids=[" ".join(p[0]) or "default" for p in PINNED]
)
def test_fingerprints_are_those_of_earlier_runs(overrides, run_dir, digest):
    cfg = compose_cfg(*overrides)
    assert default_run_dir(cfg) == run_dir  # as the run-dir resolver names it, before checks
    assert fingerprint(pixel_settings(cfg)) == digest
    assert fingerprint(pixel_settings(load(cfg))) == digest  # as the run records it


@pytest.mark.parametrize(
    "overrides", [p[0] for p in PINNED], ids=[" ".join(p[0]) or "default" for p in PINNED]
)
def test_run_json_records_the_whole_composed_config(overrides):
    cfg = compose_cfg(*overrides)
    info = run_info(load(cfg), {}, None)
    assert info["config"] == OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def test_default_settings_are_pinned_key_by_key():
    assert pixel_settings(compose_cfg()) == {
        "model": {
            "name": "demo",
            "variant": "dev",
            "builder": "demo-v2",
            "transformer": "transformer-Q8_0.gguf",
        },
        "quant": "q8_0",
        "sampler": {
            "name": "euler",
            "steps": 12,
            "guidance": 2.5,
            "width": 64,
            "height": 64,
            "max_sequence_length": 12,
        },
        "seed": 0,
        "dtype": "auto",
        "image": {"format": "png"},
    }


def test_a_local_lora_is_identified_by_its_hash(tmp_path):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not really a lora")
    settings = pixel_settings(compose_cfg(f"lora=[{{path:{lora},scale:1}}]"))
    assert settings["lora"] == [
        {"sha256": "ec1237ade26c0214348fc63e0835d4230b1746ba17ced303b0f173e66d16c943", "scale": 1.0}
    ]
    assert fingerprint(settings) == "54366f9f795499eb071d5e912a4591ce1f5534c3647f733a141e7015589ad9b6"

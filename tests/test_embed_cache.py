"""Prompt embeddings: each (prompt, text encoders, max_sequence_length) is encoded once per
process, and with runtime.embed_cache once for all later processes; a damaged entry is
encoded again. Counted at the T5 encoder's forward."""

from __future__ import annotations

import pytest

from conftest import compose_config, manifest, pixels, write_prompts
from flux_batch.driver import pipeline_for, run
from flux_batch.errors import ConfigError
from flux_batch.render.encoder import PromptEncoder

ROWS = [
    {"id": "fox", "prompt": "a fox in a cache test"},
    {"id": "owl", "prompt": "an owl in a cache test"},
    {"id": "fox2", "prompt": "a fox in a cache test"},  # same prompt: encoded once
    {"id": "cat", "prompt": "a cat in a cache test"},
]


pytestmark = pytest.mark.usefixtures("hydra_config")


@pytest.fixture
def t5_calls(monkeypatch, model_cache):
    """Counts T5 forward passes; each test starts with an empty in-process embedding cache,
    as a new process would."""
    monkeypatch.setattr(PromptEncoder, "_store", {})
    monkeypatch.setattr(PromptEncoder, "_bytes", 0)
    cfg = compose_config()

    pipe, _, _ = pipeline_for(cfg, "cpu")
    calls = []
    forward = pipe.text_encoder_2.forward
    monkeypatch.setattr(pipe.text_encoder_2, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


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


def forget_in_process_embeddings(monkeypatch):
    monkeypatch.setattr(PromptEncoder, "_store", {})
    monkeypatch.setattr(PromptEncoder, "_bytes", 0)


def test_without_the_disk_cache_each_prompt_is_encoded_once_per_process(tmp_path, t5_calls):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    run(config(prompts), tmp_path / "a")
    assert len(t5_calls) == 3  # 4 items, 3 distinct prompts
    run(config(prompts, "sampler.guidance=2"), tmp_path / "b")  # another run, same process
    assert len(t5_calls) == 3
    run(config(prompts, "sampler.max_sequence_length=16"), tmp_path / "c")  # in the key
    assert len(t5_calls) == 6


def test_a_later_process_with_the_disk_cache_never_runs_t5(tmp_path, t5_calls, monkeypatch, caplog):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS)
    cache = tmp_path / "embeddings"
    run(config(prompts, f"runtime.embed_cache={cache}"), tmp_path / "first")
    assert len(t5_calls) == 3
    entries = sorted(cache.glob("*/*.safetensors"))
    assert len(entries) == 3 and not list(cache.glob("*/.*.tmp"))

    forget_in_process_embeddings(monkeypatch)  # as a new process
    run(config(prompts, f"runtime.embed_cache={cache}"), tmp_path / "second")
    assert len(t5_calls) == 3  # zero T5 calls in the second run
    first, second = pixels(tmp_path / "first"), pixels(tmp_path / "second")
    assert all((first[k] == second[k]).all() for k in first) and len(second) == 4

    # a damaged entry is encoded again and replaced, and the run goes on
    damaged = entries[0]
    damaged.write_bytes(damaged.read_bytes()[:40])
    forget_in_process_embeddings(monkeypatch)
    caplog.set_level("WARNING")
    summary = run(config(prompts, f"runtime.embed_cache={cache}"), tmp_path / "third")
    assert summary.rendered == 4 and len(t5_calls) == 4
    assert "unreadable" in caplog.text and str(damaged) in caplog.text
    third = pixels(tmp_path / "third")
    assert all((first[k] == third[k]).all() for k in first)
    forget_in_process_embeddings(monkeypatch)
    run(config(prompts, f"runtime.embed_cache={cache}"), tmp_path / "fourth")
    assert len(t5_calls) == 4  # the replaced entry reads back


def test_the_key_holds_the_sequence_length_and_the_encoders(tmp_path, t5_calls, monkeypatch):
    from flux_batch.render.encoder import encoders_digest

    prompts = write_prompts(tmp_path / "p.jsonl", ROWS[:1])
    cache = tmp_path / "embeddings"
    run(config(prompts, f"runtime.embed_cache={cache}"), tmp_path / "a")
    forget_in_process_embeddings(monkeypatch)
    run(config(prompts, f"runtime.embed_cache={cache}", "sampler.max_sequence_length=16"), tmp_path / "b")
    assert len(t5_calls) == 2 and len(list(cache.glob("*/*.safetensors"))) == 2
    base = str(model_cache_base(tmp_path))
    assert encoders_digest(base, "torch.float32", "cpu") != encoders_digest(base, "torch.bfloat16", "cpu")
    assert encoders_digest(base, "torch.float32", "cuda:0") == encoders_digest(
        base, "torch.float32", "cuda:1"
    )


def model_cache_base(tmp_path):
    from flux_batch.demo import tiny

    return tiny.base_dir()


def test_a_file_as_the_cache_folder_is_refused(tmp_path):
    from flux_batch.config import validate

    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="runtime.embed_cache=.*: not a folder"):
        validate(compose_config(f"runtime.embed_cache={tmp_path / 'f'}"))


def test_an_unwritable_cache_folder_does_not_stop_the_run(tmp_path, t5_calls, caplog):
    prompts = write_prompts(tmp_path / "p.jsonl", ROWS[:2])
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    blocked.chmod(0o500)
    caplog.set_level("WARNING")
    try:
        summary = run(config(prompts, f"runtime.embed_cache={blocked}"), tmp_path / "run")
    finally:
        blocked.chmod(0o700)
    if not list(blocked.iterdir()):  # root may write anyway
        assert "cannot write" in caplog.text
    assert summary.rendered == 2 and len(manifest(tmp_path / "run")) == 2

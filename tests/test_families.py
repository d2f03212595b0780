"""The model-family seam: model.family picks the family, an unknown one or a variant the family
lacks is one line (exit 2, nothing written), and FLUX.1's names stay inside its own folder."""

from __future__ import annotations

import re

import pytest

from conftest import FAST, REPO, write_prompts

# what only the FLUX.1 family's folder may name (and the demo's trainer, which builds FLUX.1)
FLUX1_NAMES = re.compile(r"FluxPipeline|FluxTransformer2DModel|text_encoder_2")
# the demo and its edit variant are FLUX.1 models: their trainers build FLUX.1's classes
ALLOWED = ("flux_batch/families/flux1/", "flux_batch/demo/train.py", "flux_batch/demo/train_edit.py")


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "model.family=flux9",
            "model.family=flux9: unknown model family; the known ones are flux1, kontext, flux2, "
            "flux2-klein, chroma",
        ),
        ("model.variant=pro", "model.variant=pro: expected dev or schnell"),  # the family's check
    ],
    ids=["unknown-family", "unknown-variant"],
)
def test_an_unknown_family_or_variant_is_one_line(cli, tmp_path, override, line):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red fox"}])
    result = cli(f"dataset.path={prompts}", *FAST, override, "output.dir=out", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"flux-batch: error: {line}"]
    assert not (tmp_path / "out" / "run.json").exists()  # nothing written


def test_the_default_family_renders_as_before(cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red fox"}])
    named = cli(f"dataset.path={prompts}", *FAST, "model.family=flux1", "output.dir=named")
    again = cli(f"dataset.path={prompts}", *FAST, "output.dir=named")
    assert "rendered 1" in named.stdout and "nothing to do" in again.stdout  # same identity


def test_only_the_flux1_family_names_flux1s_classes_and_encoders():
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "flux_batch").rglob("*.py"))
        if not str(path.relative_to(REPO)).startswith(ALLOWED)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if FLUX1_NAMES.search(line)
    ]
    assert found == []


def test_a_file_of_another_size_than_the_folders_transformer_is_one_line(cli, tmp_path, model_cache):
    """The folder's transformer config is what loading hands diffusers: a GGUF whose blocks or
    width differ (a [klein] 9B file with the 4B folder) is refused before anything loads."""
    import json
    import shutil

    from flux_batch.demo import tiny

    base, gguf = tiny.ensure_built("Q8_0")
    folder = tmp_path / "wider"
    shutil.copytree(base, folder)
    config_file = folder / "transformer" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "num_attention_heads": 4}))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a red fox"}])
    result = cli(
        f"dataset.path={prompts}",
        f"model.base={folder}",
        f"model.transformer={gguf}",
        "output.dir=out",
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"flux-batch: error: model.transformer={gguf}: a transformer of 2 double and 2 single blocks, "
        f"width 32, but model.base={folder} configures 2 double and 2 single blocks, width 64; use the "
        "pipeline folder of this model's size"
    ]
    assert not (tmp_path / "out" / "run.json").exists()

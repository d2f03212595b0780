"""Bad input through the CLI: exit status 2, one clear line per problem, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest


def written(cwd: Path) -> list[str]:
    """Files a run left that Hydra's own snapshot and log do not explain."""
    return sorted(
        str(p.relative_to(cwd)) for p in (cwd / "outputs").rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name not in ("flux-batch.log", ".lock")
    ) if (cwd / "outputs").exists() else []


BAD_FILES = [
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n', "bad.jsonl:2: invalid JSON"),
    ("missing.jsonl", '{"text": "x"}\n', "missing.jsonl:1: no 'prompt' field"),
    ("empty-prompt.jsonl", '{"prompt": ""}\n', "empty-prompt.jsonl:1: no 'prompt' field"),
    ("blank-prompt.csv", 'prompt\n"  "\n', "blank-prompt.csv:2: empty 'prompt'"),
    ("bad-id.jsonl", '{"prompt": "a", "id": "a/b"}\n', "bad-id.jsonl:1: bad id 'a/b'"),
    ("dup-id.jsonl", '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n',
     "dup-id.jsonl:2: duplicate id 'x' (first on line 1)"),
    ("seed.csv", "prompt,seed\na,1.5\n", "seed.csv:2: seed='1.5' is not an integer"),
    ("neg-seed.jsonl", '{"prompt": "a", "seed": -3}\n', "neg-seed.jsonl:1: seed=-3 must be"),
    ("steps.tsv", "prompt\tsteps\na\t-1\n", "steps.tsv:2: steps=-1 must be >= 1"),
    ("size.jsonl", '{"prompt": "a", "height": 1000}\n', "size.jsonl:1: height=1000 is not a multiple of 16"),
    ("format.xml", "<prompts/>", "format.xml: unknown prompt file format '.xml'"),
    ("empty.txt", "", "empty.txt: no prompts found"),
    ("latin1.txt", b"caf\xe9\n", "latin1.txt:1: not valid UTF-8"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_prompt_file_exits_2_and_writes_nothing(cli, name, content, message):
    path = cli.cwd / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = cli(f"dataset.path={name}", check=False)
    assert result.returncode == 2, result.stderr
    assert f"{name.split('.')[0]}" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert written(cli.cwd) == []


def test_every_problem_is_listed_one_per_line(cli):
    (cli.cwd / "p.jsonl").write_text('{"prompt": ""}\n{"prompt": "fine"}\n{"prompt": "a", "steps": 0}\n')
    result = cli("dataset.path=p.jsonl", check=False)
    lines = [l for l in result.stderr.splitlines() if "p.jsonl:" in l]
    assert [l.split("p.jsonl:")[1].split(":")[0] for l in lines] == ["1", "3"]


def test_missing_prompt_file(cli):
    result = cli("dataset.path=nowhere.jsonl", check=False)
    assert result.returncode == 2
    assert "nowhere.jsonl: prompt file not found (set dataset.path)" in result.stderr


@pytest.mark.parametrize("override, message", [
    ("sampler.width=100", "sampler.width=100: image sizes must be positive multiples of 16"),
    ("runtime.offload=sequential", "sequential CPU offload does not work with GGUF"),
    ("quant=q6_k", "cannot write Q6_K; use quant=q8_0, q4_0 or bf16"),
])
def test_bad_settings_name_the_key(cli, override, message):
    result = cli(override, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert written(cli.cwd) == []


def test_unknown_key_is_refused_by_the_schema(cli):
    result = cli("sampler.stepz=3", check=False)
    assert result.returncode != 0
    assert "Key 'stepz' not in 'SamplerConfig'" in result.stderr


def test_missing_real_weights_say_how_to_get_them(cli):
    result = cli("model=flux-dev", check=False)  # HF_HUB_OFFLINE=1: the hub cannot help
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "model.base=black-forest-labs/FLUX.1-dev: cannot fetch it" in result.stderr
    assert "hf download city96/FLUX.1-dev-gguf flux1-dev-Q8_0.gguf" in result.stderr
    assert written(cli.cwd) == []


def test_missing_local_transformer_names_the_path(cli, model_cache):
    base = model_cache / "tiny-v1"
    result = cli("model=flux-dev", f"model.base={base}", "model.transformer=models/nope.gguf", check=False)
    assert result.returncode == 2
    assert "model.transformer file not found: models/nope.gguf." in result.stderr
    assert written(cli.cwd) == []


@pytest.mark.parametrize("name, content, message", [
    ("weights.gguf", b"PK\x03\x04 not gguf", "not a GGUF file"),
    ("weights.ckpt", b"\x80\x04pickle", "only GGUF transformer files are read"),
])
def test_non_gguf_weights_are_refused_without_unpickling(cli, model_cache, name, content, message):
    (cli.cwd / name).write_bytes(content)
    base = model_cache / "tiny-v1"
    result = cli("model=flux-dev", f"model.base={base}", f"model.transformer={name}", check=False)
    assert result.returncode == 2
    assert message in result.stderr and name in result.stderr
    assert written(cli.cwd) == []


def test_a_schnell_config_refuses_a_dev_transformer(cli, model_cache):
    base = model_cache / "tiny-v1"
    gguf = base / "transformer-Q8_0.gguf"
    result = cli("model=flux-schnell", f"model.base={base}", f"model.transformer={gguf}", check=False)
    assert result.returncode == 2
    assert ("this GGUF is FLUX.1-dev-style (it has a guidance embedding), but model=flux-schnell "
            "needs a schnell file; use model=flux-dev with it") in result.stderr
    assert written(cli.cwd) == []

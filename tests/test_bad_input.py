"""Bad input through the CLI: exit status 2, one clear line per problem, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def written(cwd: Path) -> list[str]:
    """Files a run left that Hydra's own snapshot and log do not explain."""
    return (
        sorted(
            str(p.relative_to(cwd))
            for p in (cwd / "outputs").rglob("*")
            if p.is_file()
            and ".hydra" not in p.parts
            and p.name != "flux-batch.log"
            and p.name.split(".")[:2] != ["", "lock"]  # .lock, .lock.merge, .lock.<part>
        )
        if (cwd / "outputs").exists()
        else []
    )


BAD_FILES = [
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n', "bad.jsonl:2: invalid JSON"),
    ("missing.jsonl", '{"text": "x"}\n', "missing.jsonl:1: no 'prompt' field"),
    ("empty-prompt.jsonl", '{"prompt": ""}\n', "empty-prompt.jsonl:1: no 'prompt' field"),
    ("blank-prompt.csv", 'prompt\n"  "\n', "blank-prompt.csv:2: empty 'prompt'"),
    ("bad-id.jsonl", '{"prompt": "a", "id": "a/b"}\n', "bad-id.jsonl:1: bad id 'a/b'"),
    (
        "dup-id.jsonl",
        '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n',
        "dup-id.jsonl:2: duplicate id 'x' (first on line 1)",
    ),
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
    lines = [line for line in result.stderr.splitlines() if "p.jsonl:" in line]
    assert [line.split("p.jsonl:")[1].split(":")[0] for line in lines] == ["1", "3"]


def test_missing_prompt_file(cli):
    result = cli("dataset.path=nowhere.jsonl", check=False)
    assert result.returncode == 2
    assert "nowhere.jsonl: prompt file not found (set dataset.path)" in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampler.width=100", "sampler.width=100: image sizes must be positive multiples of 16"),
        ("runtime.offload=sequential", "sequential CPU offload does not work with GGUF"),
        ("quant=q6_k", "cannot write Q6_K; use quant=q8_0, q4_0, bf16 or f32"),
    ],
)
def test_bad_settings_name_the_key(cli, override, message):
    result = cli(override, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert written(cli.cwd) == []


def test_unknown_key_is_refused_by_the_schema(cli):
    result = cli("sampler.stepz=3", check=False)
    assert result.returncode != 0
    assert "sampler.stepz: no such key; sampler has scheduler, shift, steps" in result.stderr


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


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("weights.gguf", b"PK\x03\x04 not gguf", "not a GGUF file"),
        ("weights.ckpt", b"\x80\x04pickle", "only GGUF transformer files are read"),
    ],
)
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
    assert (
        "this GGUF is FLUX.1-dev-style (it has a guidance embedding), but model=flux-schnell "
        "needs a schnell file; use model=flux-dev with it"
    ) in result.stderr
    assert written(cli.cwd) == []


# --- the wider matrix, through the same entry point forked from one warm interpreter ---


def ten_megabyte_line() -> bytes:
    return b"a" * (10 * 2**20) + b"\n"


def long_file_bad_at_the_end() -> bytes:
    rows = "".join(f'{{"prompt": "prompt {i}"}}\n' for i in range(100_000))
    return (rows + '{"prompt": "the last one", }\n').encode()


def wide_csv() -> bytes:
    """100,000 columns beside the prompt, on three rows: refused once, at the header."""
    header = ",".join(["prompt", *(f"c{i}" for i in range(100_000))])
    return "".join([header, *(f"\n{','.join(['p', *'v' * 100_000])}" for _ in range(3))]).encode()


def carried(count: int, value: str = "1") -> str:
    return json.dumps({"prompt": "a", **{f"c{i}": value for i in range(count)}}) + "\n"


MATRIX_FILES = [
    # control characters (Unicode Cc but tab and newline) would go into PNG text chunks
    (
        "nul-prompt.jsonl",
        '{"prompt": "a\\u0000b"}\n',
        "nul-prompt.jsonl:1: 'prompt' holds NUL U+0000 at character 2; only tab and newline (LF or "
        "CRLF) may appear in text written into the manifest and the image",
    ),
    ("nul.csv", b"prompt,note\na\x00b,x\n", "nul.csv:2: 'prompt' holds NUL U+0000 at character 2"),
    (
        "bell.txt",
        "fine\nring \x07 bell\n",
        "bell.txt:2: 'prompt' holds control character U+0007 at character 6",
    ),
    ("lone-cr.csv", 'prompt\n"a\rb"\n', "lone-cr.csv:2: 'prompt' holds carriage return U+000D"),
    (
        "del-negative.jsonl",
        '{"prompt": "a", "negative_prompt": "b\\u007f"}\n',
        "del-negative.jsonl:1: 'negative_prompt' holds DEL U+007F at character 2",
    ),
    (
        "c1-column.jsonl",
        '{"prompt": "a", "source": "x\\u009b"}\n',
        "c1-column.jsonl:1: 'source' holds control character U+009B at character 2",
    ),
    (
        "nested.jsonl",
        '{"prompt": "a", "meta": {"tags": ["ok", "b\\u001b"]}}\n',
        "nested.jsonl:1: a string in 'meta' holds escape U+001B at character 2",
    ),
    (
        "control-header.tsv",
        "prompt\tno\x01te\na\tb\n",
        "control-header.tsv:1: the header's column name 'no\\x01te' holds control character U+0001",
    ),
    # the columns a row carries into the manifest and the image are bounded
    (
        "wide.csv",
        wide_csv,
        "wide.csv:1: the header has 100,001 columns, 100,000 of them carried into "
        "the manifest and the image; the limit is 64 carried columns",
    ),
    (
        "many-columns.jsonl",
        carried(65),
        "many-columns.jsonl:1: 65 columns would be carried into the manifest and the image; the limit is 64",
    ),
    (
        "big-columns.jsonl",
        carried(2, "x" * 8200),
        "big-columns.jsonl:1: the columns carried into the "
        "manifest and the image take 16,420 bytes as JSON; the limit is 16,384 (16 KiB)",
    ),
    ("traversal.jsonl", '{"prompt": "a", "id": "../../x"}\n', "traversal.jsonl:1: bad id '../../x'"),
    ("nul-id.jsonl", '{"prompt": "a", "id": "a\\u0000b"}\n', "nul-id.jsonl:1: bad id 'a\\x00b'"),
    ("slash-id.csv", "id,prompt\nsub/dir,a\n", "slash-id.csv:2: bad id 'sub/dir'"),
    (
        "huge-line.txt",
        ten_megabyte_line,
        "huge-line.txt:1: 'prompt' is 10,485,760 characters long; the limit is 20,000",
    ),
    ("long-file.jsonl", long_file_bad_at_the_end, "long-file.jsonl:100001: invalid JSON"),
    ("array.jsonl", '[{"prompt": "a"}]\n', "array.jsonl:1: expected a JSON object, got list"),
    (
        "no-header.csv",
        "a red fox in the snow,7\nan owl,3\n",
        "no-header.csv:1: no 'prompt' column in the header ('a red fox in the snow', '7')",
    ),
    ("no-header.tsv", "a red fox\t7\n", "no-header.tsv:1: no 'prompt' column in the header"),
    (
        "dup-columns.csv",
        "prompt,seed,Seed\na,1,2\n",
        "dup-columns.csv:1: duplicate column 'Seed' in the header",
    ),
    ("width0.jsonl", '{"prompt": "a", "width": 0}\n', "width0.jsonl:1: width=0 must be >= 16"),
    (
        "guidance-nan.jsonl",
        '{"prompt": "a", "guidance": NaN}\n',
        "guidance-nan.jsonl:1: guidance=nan must be a finite number",
    ),
    ("num0.csv", "prompt,num_images\na,0\n", "num0.csv:2: num_images=0 must be >= 1"),
    ("bool-seed.jsonl", '{"prompt": "a", "seed": true}\n', "bool-seed.jsonl:1: seed=True is not an integer"),
    (
        "reserved.jsonl",
        '{"prompt": "a", "sha256": "x"}\n',
        "column 'sha256' would overwrite the manifest field",
    ),
    (
        "case.jsonl",
        '{"prompt": "a", "Prompt": "b"}\n',
        "case.jsonl:1: fields 'prompt' and 'Prompt' differ only in case",
    ),
    ("quote.csv", 'prompt\n"never closed\n', "quote.csv:2: malformed CSV"),
    ("a-dir.jsonl", None, "a-dir.jsonl: is a directory, not a prompt file"),
]


@pytest.mark.parametrize("name, content, message", MATRIX_FILES, ids=[m[0] for m in MATRIX_FILES])
def test_malformed_prompt_files(cli_server, tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        content = content() if callable(content) else content
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = cli_server(tmp_path, f"dataset.path={name}")
    assert result.returncode == 2, result.stdout
    assert message in result.stdout
    assert len([line for line in result.stdout.splitlines() if name in line]) == 1  # one line, one problem
    assert "Traceback" not in result.stdout
    assert written(tmp_path) == []


MATRIX_OVERRIDES = [
    ("sampler.width=0", "sampler.width=0: image sizes must be positive multiples of 16"),
    ("sampler.steps=-1", "sampler.steps=-1: must be an integer >= 1"),
    ("sampler.guidance=nan", "sampler.guidance=nan: must be a finite number >= 0"),
    ("sampler.guidance=-1", "sampler.guidance=-1.0: must be a finite number >= 0"),
    # the same checks as a prompt row's (config.py), with the config's key in front
    ("sampler.true_cfg=0.5", "sampler.true_cfg=0.5: must be >= 1 (1 turns true CFG off)"),
    ("sampler.scheduler=dpm", "sampler.scheduler=dpm: expected one of euler"),
    ("sampler.aspect=5:0", "sampler.aspect=5:0: expected an aspect ratio as W:H with positive numbers"),
    ("num_images=0", "num_images=0: must be an integer >= 1"),
    ("batch_size=0", "batch_size=0: must be an integer >= 1"),
    ("limit=-1", "limit=-1: must be an integer >= 0"),
    ("seed=-1", "seed=-1: must be an integer >= 0"),
    ("max_errors=-1", "max_errors=-1: must be an integer >= 0"),
    ("output.quality=0", "output.quality=0: must be between 1 and 100"),
    ("dataset.format=xml", "dataset.format=xml: expected one of auto, jsonl, csv, tsv, txt"),
    ("runtime.device=gpu", "runtime.device=gpu: expected auto, cpu, cuda, cuda:N or mps"),
    ("cache=fbcache cache.threshold=-0.1", "cache.threshold=-0.1: must be a finite number >= 0"),
    ("cache=taylorseer cache.interval=0", "cache.interval=0: must be an integer >= 1"),
    # refused by Hydra while composing: one line naming the key (refusals.py)
    ("output.format=gif", "output.format=gif: expected one of png, webp, jpg"),
    ("sampler.steps=abc", "sampler.steps=abc: expected an integer"),
    ("guidance=nan", "guidance: no such key; the config has model, quant, sampler"),
    ("cache=teacache", "Could not find 'cache/teacache'"),
    ("output.layout=sharded output.shard_size=0", "output.shard_size=0: must be an integer >= 1"),
    ("output.layout=zip", "output.layout=zip: expected one of flat, sharded, webdataset"),
    ("output.layout=webdataset output.shard_size=0", "output.shard_size=0: must be an integer >= 1"),
    (
        "output.layout=webdataset output.captions=true",
        "output.captions=true: output.layout=webdataset stores each prompt as its sample's .txt already",
    ),
]


@pytest.mark.parametrize("override, message", MATRIX_OVERRIDES, ids=[m[0] for m in MATRIX_OVERRIDES])
def test_bad_overrides(cli_server, tmp_path, override, message):
    result = cli_server(tmp_path, *override.split())
    assert result.returncode == 2, result.stdout
    assert message in result.stdout
    assert "Traceback" not in result.stdout
    assert written(tmp_path) == []


def truncated_gguf(tiny: Path, dest: Path) -> None:
    data = (tiny / "transformer-Q8_0.gguf").read_bytes()
    dest.write_bytes(data[: len(data) * 2 // 3])  # an interrupted download


MATRIX_WEIGHTS = [
    ("cut.gguf", truncated_gguf, "truncated"),
    (
        "header-only.gguf",
        lambda tiny, dest: dest.write_bytes((tiny / "transformer-Q8_0.gguf").read_bytes()[:64]),
        "truncated GGUF file",
    ),
    (
        "weights.safetensors",
        lambda tiny, dest: dest.write_bytes(b"{}"),
        "only GGUF transformer files are read",
    ),
    (
        "weights.pt",
        lambda tiny, dest: dest.write_bytes(b"\x80\x04pickle"),
        "only GGUF transformer files are read",
    ),
    ("folder.gguf", lambda tiny, dest: dest.mkdir(), "cannot read it (Is a directory)"),
]


@pytest.mark.parametrize("name, make, message", MATRIX_WEIGHTS, ids=[m[0] for m in MATRIX_WEIGHTS])
def test_bad_weights_files(cli_server, model_cache, tmp_path, name, make, message):
    tiny = model_cache / "tiny-v1"
    make(tiny, tmp_path / name)
    result = cli_server(tmp_path, "model=flux-dev", f"model.base={tiny}", f"model.transformer={name}")
    assert result.returncode == 2, result.stdout
    assert f"model.transformer={name}" in result.stdout and message in result.stdout
    assert "loading transformer" not in result.stdout  # refused before diffusers sees it
    assert "Traceback" not in result.stdout
    assert written(tmp_path) == []


def test_text_at_the_bounds_is_carried_into_the_manifest_and_the_image(cli_server, tmp_path):
    """The other side of the refusals above: tab, LF and CRLF, 64 carried columns and 16 KiB of
    them as JSON are written as given."""
    from PIL import Image

    from conftest import FAST, manifest

    columns = {f"c{i}": "v" for i in range(63)}
    columns["note"] = "n" * (16 * 1024 - len(json.dumps({**columns, "note": ""})))
    (tmp_path / "p.csv").write_bytes(
        (
            "prompt,"
            + ",".join(columns)
            + "\r\n"
            + '"a\tcat\r\non two lines",'
            + ",".join(columns.values())
            + "\r\n"
        ).encode()
    )
    result = cli_server(tmp_path, "dataset.path=p.csv", *FAST, "output.dir=run")
    assert result.returncode == 0, result.stdout
    [record] = manifest(tmp_path / "run")
    assert record["prompt"] == "a\tcat\r\non two lines"
    assert {key: record[key] for key in columns} == columns
    with Image.open(tmp_path / "run" / record["file_name"]) as image:
        assert json.loads(image.info["flux_batch"])["note"] == columns["note"]
        assert image.info["parameters"].startswith("a\tcat\r\non two lines\n")

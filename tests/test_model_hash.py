"""The transformer file's SHA-256: in run.json, every manifest record and the infotext
(`Model hash: <10 hex>`, as AUTOMATIC1111 and Forge write it); hashed once per file; a run
whose model file changed content under the same name and size is not resumed with it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from conftest import FAST, manifest, write_prompts

ROWS = [{"id": "fox", "prompt": "a red fox in the snow"}, {"id": "owl", "prompt": "an owl at night"}]


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_hash_is_in_run_json_every_record_and_the_infotext(cli, model_cache):
    from flux_batch.store.images import read_parameters

    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    cli(f"dataset.path={prompts}", "output.dir=run", *FAST)
    transformer = model_cache / "tiny-v1" / "transformer-Q8_0.gguf"
    want = sha256(transformer)
    run = cli.cwd / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["files"]["transformer"] == {"name": "transformer-Q8_0.gguf", "sha256": want}
    records = manifest(run)
    assert [r["model_sha256"] for r in records] == [want, want]
    assert list(records[0]).index("model_sha256") == list(records[0]).index("quant") + 1
    parameters = read_parameters(run / records[0]["file_name"])
    assert f"Size: 32x32, Model hash: {want[:10]}, Model: transformer-Q8_0" in parameters

    from sd_parsers import ParserManager  # reads it as it reads AUTOMATIC1111's images

    [model] = ParserManager().parse(run / records[0]["file_name"]).models
    assert (model.name, model.hash) == ("transformer-Q8_0", want[:10])


def test_a_model_file_changed_under_the_same_name_is_refused(cli, model_cache):
    prompts = write_prompts(cli.cwd / "p.jsonl", ROWS)
    model = cli.cwd / "model.gguf"
    shutil.copy(model_cache / "tiny-v1" / "transformer-Q8_0.gguf", model)
    args = (f"dataset.path={prompts}", f"model.transformer={model}", "output.dir=run", *FAST)
    cli(*args, "limit=1")
    before = (cli.cwd / "run" / "metadata.jsonl").read_bytes()

    data = bytearray(model.read_bytes())
    data[-100] ^= 0x01  # other weights, same name and size: the fingerprint cannot tell
    model.write_bytes(bytes(data))
    refused = cli(*args, check=False)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"flux-batch: error: model.transformer={model}: its content changed since this run began"
    )
    assert "loading transformer" not in refused.stderr
    assert (cli.cwd / "run" / "metadata.jsonl").read_bytes() == before

    info = json.loads((cli.cwd / "run" / "run.json").read_text())
    del info["files"]  # a run made before hashes were recorded resumes as before
    (cli.cwd / "run" / "run.json").write_text(json.dumps(info))
    resumed = cli(*args)
    assert "rendered 1, skipped 1 already done" in resumed.stdout
    assert manifest(cli.cwd / "run")[-1]["model_sha256"] == sha256(model)


def test_a_file_is_hashed_once_then_read_back_until_it_changes(tmp_path, monkeypatch):
    from flux_batch.model import file_hash

    monkeypatch.setenv("FLUX_BATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_hash, "_known", {})
    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"weights" * 1000)
    assert file_hash.file_sha256(weights) == sha256(weights)
    store = tmp_path / "cache" / file_hash.STORE
    entries = json.loads(store.read_text())
    assert entries[os.path.realpath(weights)][3] == sha256(weights)

    entries[os.path.realpath(weights)][3] = "0" * 64  # what a later process finds stored
    store.write_text(json.dumps(entries))
    monkeypatch.setattr(file_hash, "_known", {})
    assert file_hash.file_sha256(weights) == "0" * 64  # read back, not hashed again
    os.utime(weights, ns=(1, 1))  # the file changed: hashed again
    assert file_hash.file_sha256(weights) == sha256(weights)

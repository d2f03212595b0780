"""What flux-batch promises about the files it touches: image paths never leave the run
directory, weights are read only from GGUF and safetensors, nothing is unpickled, no remote
code runs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

from conftest import FAST, REPO, write_prompts
from flux_batch.errors import RunDirError
from flux_batch.store.run_dir import RunStore


@pytest.mark.parametrize(
    "file_name",
    [
        "images/../../escape.png",
        "../escape.png",
        "/tmp/escape.png",
        "images/sub/escape.png",
        "images/../run.json",
        "images/..",
    ],
)
def test_image_paths_cannot_leave_the_images_folder(tmp_path, file_name):
    store = RunStore(tmp_path / "run")
    store.open()
    try:
        with pytest.raises(RunDirError, match="refusing to write outside"):
            store.save_image(file_name, b"data")
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert not (tmp_path / "run" / "run.json").exists()


def test_symlinks_cannot_redirect_an_image_write(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"precious")
    store = RunStore(tmp_path / "run")
    store.open()
    try:
        store.images.mkdir()
        (store.images / "fox.png").symlink_to(outside)  # planted where an image will go
        with pytest.raises(RunDirError):
            store.save_image("images/fox.png", b"new image")
        store.save_image("images/owl.png", b"new image")  # an ordinary name still works
    finally:
        store.close()
    assert outside.read_bytes() == b"precious"
    assert (store.images / "owl.png").read_bytes() == b"new image"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(store.images)
    store.images.symlink_to(elsewhere, target_is_directory=True)  # the whole folder redirected
    store.open()
    try:
        with pytest.raises(RunDirError):
            store.save_image("images/owl.png", b"new image")
    finally:
        store.close()
    assert list(elsewhere.iterdir()) == []


class Payload:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pipeline_folder_with_pickled_weights_is_refused_unread(cli_server, model_cache, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(model_cache / "tiny-v1", base, ignore=shutil.ignore_patterns("*.gguf"))
    (base / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (base / "vae" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a fox"}])
    result = cli_server(
        tmp_path,
        "model=flux-dev",
        f"model.base={base}",
        f"model.transformer={model_cache / 'tiny-v1' / 'transformer-Q8_0.gguf'}",
        f"dataset.path={prompts}",
        "output.dir=run",
        *FAST,
    )
    assert result.returncode == 2, result.stdout
    assert f"model.base={base}: cannot be loaded as a FLUX pipeline with safetensors weights" in result.stdout
    assert "Traceback" not in result.stdout
    assert not marker.exists(), "a pickle was loaded"
    assert not (tmp_path / "run" / "metadata.jsonl").exists()


def test_no_code_path_unpickles_or_runs_remote_code():
    source = "\n".join(p.read_text() for p in (REPO / "flux_batch").rglob("*.py"))
    for forbidden in (
        "trust_remote_code",
        "torch.load(",
        "import pickle",
        "pickle.load",
        "weights_only=False",
    ):
        assert forbidden not in source, forbidden
    assert "use_safetensors=True" in source

"""`python -m flux_batch.demo.train OUT`: seeded, so the same settings give the same weights,
whole or resumed, with progress on stdout and every step's losses in a log."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.numpy import load_file

from flux_batch.demo import VERSION, model_dir
from flux_batch.demo.train import main

SHORT = ["--vae-steps", "3", "--steps", "2", "--batch", "4", "--pool", "40", "--log-every", "1"]
LATER = ["--finetune-steps", "2", "--decoder-steps", "2"]  # stages 3 and 4
OFF = ["--finetune-steps", "0", "--decoder-steps", "0"]


def losses(folder, stage):
    lines = (folder / "train-log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["stage"] == stage]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same short training twice: all four stages by the command; then, in this process,
    stages 1-2 into one folder and stages 3-4 resumed from it into another."""
    root = tmp_path_factory.mktemp("train")
    command = subprocess.run(
        [sys.executable, "-m", "flux_batch.demo.train", str(root / "a"), *SHORT, *LATER],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert command.returncode == 0, command.stderr
    main([str(root / "stage-2"), *SHORT, *OFF])
    main([str(root / "b"), *SHORT, *LATER, "--resume", str(root / "stage-2")])
    return root / "a", root / "b", command.stdout


def test_the_same_seed_gives_the_same_weights_whole_or_resumed(two_runs):
    a, b, _ = two_runs
    for stage in ("vae", "transformer", "finetune", "decoder"):
        assert losses(a, stage) == losses(b, stage), stage
    for part in (
        "vae/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder_2/model.safetensors",
    ):
        first, second = load_file(a / part), load_file(b / part)
        assert first.keys() == second.keys()
        for name in first:
            assert abs(first[name] - second[name]).max() <= 1e-6, (part, name)
    assert (a / "transformer-Q8_0.gguf").read_bytes() == (b / "transformer-Q8_0.gguf").read_bytes()
    assert (
        json.loads((a / "vae" / "config.json").read_text())["scaling_factor"]
        == json.loads((b / "vae" / "config.json").read_text())["scaling_factor"]
    )


def test_progress_and_loss_log(two_runs):
    a, _, stdout = two_runs
    lines = stdout.splitlines()
    assert lines[0].startswith("vae 1/3 mse ") and "CPU-s)" in lines[0]
    for stage, measure in (("transformer", "loss"), ("finetune", "loss"), ("decoder", "mse")):
        assert any(line.startswith(f"{stage} 2/2 {measure} ") for line in lines), stage
        assert [r["step"] for r in losses(a, stage)] == [1, 2]
    assert lines[-1].startswith(f"{a}: trained {VERSION} in ")
    assert [r["step"] for r in losses(a, "vae")] == [1, 2, 3]
    summary = json.loads((a / "training.json").read_text())
    assert summary["settings"]["vae_steps"] == 3
    assert set(summary["stages"]) == {"vae", "transformer", "finetune", "decoder"}
    assert summary["total"]["cpu_s"] == pytest.approx(
        sum(s["cpu_s"] for s in summary["stages"].values()), abs=0.2
    )
    for folder in (
        "scheduler",
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "vae",
        "transformer",
    ):
        assert (a / folder).is_dir(), folder
    assert not list(a.parent.glob(".*partial"))


def test_resume_refuses_a_folder_trained_with_other_settings(two_runs, tmp_path):
    a, _, _ = two_runs
    with pytest.raises(SystemExit, match="its decoder stage was trained with decoder_steps=2, not 300"):
        main([str(tmp_path / "c"), *SHORT, "--finetune-steps", "2", "--resume", str(a)])
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".*partial"))


def test_a_short_run_starts_exactly_as_the_shipped_weights_did(two_runs):
    """The shipped model's log begins with the losses this recipe gives: same data, same seed."""
    a, _, _ = two_runs
    shipped = losses(model_dir(), "vae")[:3]
    ours = losses(a, "vae")
    assert [r["mse"] for r in ours] == pytest.approx([r["mse"] for r in shipped], rel=1e-4)
    assert [r["kl"] for r in ours] == pytest.approx([r["kl"] for r in shipped], rel=1e-4)


def test_the_vae_loss_weighs_a_shape_pixel_above_a_background_pixel():
    """An error on the shape costs 1 + shape_weight times the same error on the background."""
    import torch

    from flux_batch.demo.shapes import BACKGROUND
    from flux_batch.demo.train import weighted_mse

    x = (torch.tensor(BACKGROUND, dtype=torch.float32) / 127.5 - 1.0).view(1, 3, 1, 1).repeat(1, 1, 4, 4)
    x[0, :, 0, 0] = torch.tensor([0.7, -0.7, -0.7])  # one red pixel
    on_shape, on_background = x.clone(), x.clone()
    on_shape[0, 0, 0, 0] += 0.1
    on_background[0, 0, 3, 3] += 0.1
    assert weighted_mse(on_shape, x, 4.0) == pytest.approx(5 * weighted_mse(on_background, x, 4.0))
    assert weighted_mse(on_background, x, 4.0) == pytest.approx(0.01 / 48)

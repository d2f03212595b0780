"""GGUF files across stable-diffusion.cpp and flux-batch, both ways. Not in CI: it builds sd.cpp.

    python bench/interop.py [--build DIR] [--jobs 2]

Builds stable-diffusion.cpp's CLI (`sd-cli`) from the `stable-diffusion-cpp-python` 0.4.7 sources
on PyPI (`pip download`, cmake; about 8 minutes on 2 cores; an existing --build DIR holding
bin/sd-cli is reused). Then, on the demo model's transformer (BFL layout, hidden size 128):

1. sd.cpp to flux-batch: the transformer as people feed sd.cpp, a bf16 safetensors file in the
   BFL layout with the `model.diffusion_model.` prefix of full checkpoints, converted by
   `sd-cli -M convert --type q8_0` (and `q4_K`, a K-quant gguf-py cannot write, and `bf16`).
   `flux-batch-gguf inspect` describes each; flux-batch renders demo-eval.jsonl (36 prompts)
   with each; `flux-batch-eval --reference` compares them with flux-batch's own Q8_0 file of the
   same weights (PSNR, accuracy).
2. flux-batch to sd.cpp: flux-batch's own files (Q8_0 and Q4_0, BFL layout) read by sd.cpp's model
   loader (`sd-cli -M convert --type f32`): each tensor sd.cpp decodes is compared with gguf-py's
   dequantization of the same tensor (largest absolute difference, names). And sd.cpp's image
   metadata reader (`sd-cli -M metadata`) reads a flux-batch PNG's parameters.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import machine, write_section  # noqa: E402

BIN = Path(sys.executable).parent
PACKAGE = "stable-diffusion-cpp-python==0.4.7"


def build_sd_cli(build: Path, jobs: int) -> Path:
    cli = build / "bin" / "sd-cli"
    if cli.exists():
        return cli
    build.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            PACKAGE,
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(build),
        ],
        check=True,
        capture_output=True,
    )
    [sdist] = glob.glob(str(build / "stable_diffusion_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(build, filter="data")
    [source] = glob.glob(str(build / "stable_diffusion_cpp_python-*" / "vendor" / "stable-diffusion.cpp"))
    subprocess.run(
        ["cmake", "-S", source, "-B", str(build), "-DSD_BUILD_EXAMPLES=ON", "-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["cmake", "--build", str(build), "-j", str(jobs), "--target", "sd-cli"],
        check=True,
        capture_output=True,
    )
    return cli


def sd(cli: Path, *args: str) -> str:
    result = subprocess.run([str(cli), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"sd-cli {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout + result.stderr


def bfl_checkpoint(out: Path) -> Path:
    """The demo transformer as a full-checkpoint-style bf16 BFL safetensors file."""
    import torch
    from safetensors.torch import save_file

    from flux_batch import demo
    from flux_batch.gguf.checkpoint import open_checkpoint, plan

    ckpt = open_checkpoint(demo.model_dir() / "transformer")
    tensors = {
        f"model.diffusion_model.{t.name}": t.load().to(torch.bfloat16).contiguous() for t in plan(ckpt, "bfl")
    }
    save_file(tensors, str(out))
    return out


def render(name: str, transformer: Path, work: Path) -> Path:
    out = work / f"run-{name}"
    subprocess.run(
        [
            str(BIN / "flux-batch"),
            "model=demo",
            f"model.transformer={transformer}",
            f"dataset.path={ROOT}/flux_batch/prompts/demo-eval.jsonl",
            "batch_size=4",
            f"output.dir={out}",
            "runtime.progress=false",
        ],
        check=True,
        capture_output=True,
    )
    return out


def evaluate(run: Path, reference: Path) -> dict:
    out = run.with_suffix(".eval.json")
    subprocess.run(
        [str(BIN / "flux-batch-eval"), str(run), "--reference", str(reference), "-o", str(out)],
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


def decoded(path: Path) -> dict[str, np.ndarray]:
    import gguf

    return {
        t.name: gguf.quants.dequantize(t.data, t.tensor_type)
        .astype(np.float32)
        .reshape(tuple(int(d) for d in reversed(t.shape)))
        for t in gguf.GGUFReader(path).tensors
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=Path(tempfile.gettempdir()) / "flux-batch-sdcpp")
    parser.add_argument("--jobs", type=int, default=2)
    a = parser.parse_args()
    start_load = machine()
    cli = build_sd_cli(a.build, a.jobs)
    work = Path(tempfile.mkdtemp(prefix="flux-batch-interop-"))
    from flux_batch import demo
    from flux_batch.gguf.inspect import summarize
    from flux_batch.gguf.quantize import quantize_checkpoint

    ours = {}
    for qtype in ("Q8_0", "Q4_0"):
        ours[qtype] = work / f"flux-batch-{qtype}.gguf"
        quantize_checkpoint(demo.model_dir() / "transformer", ours[qtype], qtype, layout="bfl")
    source = bfl_checkpoint(work / "demo-bf16.safetensors")
    reference = render("flux-batch-Q8_0", ours["Q8_0"], work)

    rows = [
        "| file | written by | inspect | renders in flux-batch | PSNR vs flux-batch Q8_0 (mean / min) | accuracy colour / shape / size / position |",
        "|---|---|---|---|---|---|",
    ]
    for sd_type in ("q8_0", "q4_K", "bf16"):
        converted = work / f"sdcpp-{sd_type}.gguf"
        sd(cli, "-M", "convert", "-m", str(source), "-o", str(converted), "--type", sd_type)
        info = summarize(converted)
        types = ", ".join(f"{k} {v['tensors']}" for k, v in info["types"].items())
        run = render(f"sdcpp-{sd_type}", converted, work)
        scores = evaluate(run, reference)
        acc = " / ".join(f"{v['accuracy'] * 100:.1f}" for v in scores["accuracy"].values())
        rows.append(
            f"| {converted.name} | sd-cli -M convert --type {sd_type} | {info['layout']}, "
            f"prefix {info['prefix']}, {info['variant']}, hidden {info['hidden_size']}; {types} | "
            f"yes, {scores['images']} images | {scores['psnr']['mean_db']} / {scores['psnr']['min_db']} dB | {acc} |"
        )
    ref_scores = evaluate(reference, reference)
    rows.append(
        f"| {ours['Q8_0'].name} | flux-batch-gguf quantize --type Q8_0 | bfl | yes (reference) | - | "
        + " / ".join(f"{v['accuracy'] * 100:.1f}" for v in ref_scores["accuracy"].values())
        + " |"
    )

    back_rows = [
        "| flux-batch file | tensors sd.cpp read | names kept | largest difference from gguf-py's decoding |",
        "|---|---:|---|---:|",
    ]
    for qtype, path in ours.items():
        back = work / f"sdcpp-read-{qtype}.gguf"
        sd(cli, "-M", "convert", "-m", str(path), "-o", str(back), "--type", "f32")
        want, got = decoded(path), decoded(back)
        worst = max(float(np.abs(got[n] - want[n]).max()) for n in want if n in got)
        back_rows.append(
            f"| {path.name} | {len(got)} of {len(want)} | {'yes' if got.keys() == want.keys() else 'no'} | {worst:g} |"
        )
    image = sorted((reference / "images").glob("*.png"))[0]
    metadata = sd(cli, "-M", "metadata", "--image", str(image))
    seen = "Steps:" in metadata and "Model hash:" in metadata

    body = "\n".join(
        [
            f"stable-diffusion.cpp built from {PACKAGE}'s sources (`sd-cli`); the demo model's transformer "
            "(BFL layout, hidden size 128, 2 double + 2 single blocks).",
            "",
            "**sd.cpp's files in flux-batch** (from a bf16 BFL safetensors with the `model.diffusion_model.` prefix):",
            "",
            *rows,
            "",
            "**flux-batch's files in sd.cpp** (`sd-cli -M convert --type f32` reads each tensor through sd.cpp's loader):",
            "",
            *back_rows,
            "",
            f"sd.cpp's metadata reader on a flux-batch PNG (`sd-cli -M metadata`): parameters "
            f"{'read, with Steps and Model hash' if seen else 'NOT read'}.",
        ]
    )
    write_section(
        "interop", "GGUF interoperability with stable-diffusion.cpp", body, ("gguf", "diffusers"), start_load
    )


if __name__ == "__main__":
    main()

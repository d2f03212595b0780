"""The reference loop: one pipeline call per prompt, as diffusers' GGUF example renders.

    python bench/plain_loop.py BASE TRANSFORMER.gguf PROMPTS.jsonl OUT_DIR --family flux1 --width 128 ...

`--family` picks the diffusers pipeline and transformer classes (FluxPipeline for flux1,
Flux2KleinPipeline for flux2-klein, ChromaPipeline for chroma, ...); nothing else of
flux-batch runs.

Loads exactly as flux-batch does (from_single_file with GGUFQuantizationConfig, then
from_pretrained), renders each JSONL row's `prompt` with a CPU generator seeded by its `seed`,
saves a PNG per row, and prints `loop seconds: X` (the rendering loop alone). A row's `image`
(a path relative to the prompt file, already at the output size) goes to the pipeline as a
PIL picture, which it preprocesses and VAE-encodes at every call. On CUDA it uses
enable_model_cpu_offload(), as the reference script does.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import torch
from diffusers import GGUFQuantizationConfig
from PIL import Image

from flux_batch import families


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("base", "transformer", "prompts", "out"):
        parser.add_argument(name)
    parser.add_argument("--family", default=families.DEFAULT)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--max-sequence-length", type=int, default=32)
    a = parser.parse_args()
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    family = families.get(a.family)
    transformer = family.transformer_class().from_single_file(
        a.transformer,
        quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
        config=a.base,
        subfolder="transformer",
        dtype=dtype,
    )
    pipe = family.pipeline_class().from_pretrained(a.base, transformer=transformer, dtype=dtype)
    if cuda:
        pipe.enable_model_cpu_offload()
    pipe.set_progress_bar_config(disable=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in open(a.prompts)]
    # Kontext resizes every request to max_area (1024x1024 by default): ask for the size itself
    kontext = "max_area" in inspect.signature(pipe.__call__).parameters
    sized = {"max_area": a.width * a.height} if kontext else {}
    started = time.perf_counter()
    for row in rows:
        image = pipe(
            prompt=row["prompt"],  # by name: Kontext's first argument is its input image
            width=a.width,
            height=a.height,
            num_inference_steps=a.steps,
            guidance_scale=a.guidance,
            max_sequence_length=a.max_sequence_length,
            generator=torch.Generator("cpu").manual_seed(row["seed"]),
            **sized,
            **inputs(row, Path(a.prompts).parent, kontext),
        ).images[0]
        image.save(out / f"{row['id']}.png")
    print(f"loop seconds: {time.perf_counter() - started:.3f}")


def inputs(row: dict, folder: Path, kontext: bool) -> dict:
    """The row's input picture as its pipeline takes it: Kontext one image (not resized again),
    the FLUX.2 pipelines a list."""
    if "image" not in row:
        return {}
    picture = Image.open(folder / row["image"]).convert("RGB")
    return {"image": picture, "_auto_resize": False} if kontext else {"image": [picture]}


if __name__ == "__main__":
    main()
